"""A node's result as segment tags, and back: the one writer and the one reader of the tags.

A lymph-node segment (in a `.seg.nrrd` and in a Slicer scene alike) carries its node's seed, status,
probability, measurements, the model that made it and the checksum of the mask the engine wrote, as
string tags. `segment_tags` turns a NodeResult into them; `read_segment_tags` turns them back into
the NodeResult's fields. The reader takes a plain dict or a `get(key) -> str | None` callable, so
the Slicer module only fetches the tags of a vtkSegment and never names a key itself.

Slicer serialises tags as `key:value|`, sorted by key, with no escaping (`serialize_tags`): so tag
keys must not contain ':' or '|', and tag values must not contain '|' (replaced here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from . import node_status
from .mask_checksum import mask_checksum
from .model_identity import ModelIdentity
from .node_result import NodeResult

TAG_PREFIX = "LymphNodeMTL."
TAG_SEED_ID = TAG_PREFIX + "SeedId"
TAG_SEED_RAS = TAG_PREFIX + "SeedRas"
TAG_PROBABILITY = TAG_PREFIX + "Probability"
TAG_PREDICTED_LABEL = TAG_PREFIX + "PredictedLabel"
TAG_SHORT_AXIS = TAG_PREFIX + "ShortAxisMm"
TAG_LONG_AXIS = TAG_PREFIX + "LongAxisMm"
TAG_VOLUME = TAG_PREFIX + "VolumeMm3"
TAG_MODEL_ID = TAG_PREFIX + "ModelId"
TAG_MEAN_HU = TAG_PREFIX + "MeanHu"
# checksum of the mask the engine wrote: a segment whose mask differs was edited by a person
TAG_MASK_HASH = TAG_PREFIX + "MaskHash"
TAG_WEIGHTS_SHA256 = TAG_PREFIX + "WeightsSha256"
# what the engine can say about the node (core/node_status.py) and how sure it is
TAG_STATUS = TAG_PREFIX + "Status"
TAG_MASK_AGREEMENT = TAG_PREFIX + "MaskAgreement"
TAG_PROBABILITY_LOW = TAG_PREFIX + "ProbabilityLow"
TAG_PROBABILITY_HIGH = TAG_PREFIX + "ProbabilityHigh"
TAG_FIELD_OF_VIEW = TAG_PREFIX + "FieldOfViewMm"
# Slicer's segment tag holding the terminology (vtkSegment::GetTerminologyEntryTagName()).
TERMINOLOGY_TAG = "TerminologyEntry"
# Slicer's serialised terminology entry, fields joined by '~', codes as scheme^value^meaning:
# context ~ category ~ type ~ type modifier ~ anatomic context ~ region ~ region modifier.
# Both of Slicer's built-in lists (3D Slicer General Anatomy, DICOM master) file SNOMED CT
# 59441001 "Lymph node" under the category Tissue (85756007), so Slicer finds it there.
LYMPH_NODE_TERMINOLOGY = "~".join(
    [
        "Segmentation category and type - 3D Slicer General Anatomy list",
        "SCT^85756007^Tissue",
        "SCT^59441001^Lymph node",
        "^^",
        "Anatomic codes - DICOM master list",
        "^^",
        "^^",
    ]
)
# Numeric tags: tag, NodeResult field, decimals written.
_NUMBER_TAGS = (
    (TAG_PROBABILITY, "probability", 4),
    (TAG_SHORT_AXIS, "short_axis_mm", 2),
    (TAG_LONG_AXIS, "long_axis_mm", 2),
    (TAG_VOLUME, "volume_mm3", 2),
    (TAG_MEAN_HU, "mean_hu", 1),
    (TAG_MASK_AGREEMENT, "mask_agreement", 3),
    (TAG_PROBABILITY_LOW, "probability_low", 4),
    (TAG_PROBABILITY_HIGH, "probability_high", 4),
    (TAG_FIELD_OF_VIEW, "field_of_view_mm", 1),
)
# Fields a node without a usable mask never shows, whatever its tags say.
_PROBABILITY_FIELDS = ("probability", "probability_low", "probability_high")


# --- writing -------------------------------------------------------------------------------------
def segment_tags(result: NodeResult, terminology: str = LYMPH_NODE_TERMINOLOGY,
                 engine_mask_checksum: str | None = None) -> dict[str, str]:
    """The tags one node's segment carries: terminology, seed, status, probability, measurements, model.

    terminology: the serialised terminology entry (the Slicer module names its own list).
    engine_mask_checksum: the checksum of the mask the engine wrote when `result.mask` is not that
        mask (a re-classified edit), so the segment stays marked as edited; None: `result.mask`'s.
    """
    model = result.model
    tags = {
        TERMINOLOGY_TAG: terminology,
        TAG_SEED_ID: result.node_id,
        TAG_SEED_RAS: " ".join(f"{c:.3f}" for c in result.seed_ras),
        # a node without a usable mask has no label: an empty tag, as in nodes.csv
        TAG_PREDICTED_LABEL: "" if int(result.predicted_label) < 0 else str(int(result.predicted_label)),
        TAG_MODEL_ID: model.model_id if model else "",
        TAG_MASK_HASH: engine_mask_checksum or mask_checksum(result.mask, result.bbox_start_kji),
        TAG_STATUS: str(result.status),
    }
    for key, name, decimals in _NUMBER_TAGS:
        tags[key] = _fixed(getattr(result, name), decimals)
    if model and model.weights_sha256:
        tags[TAG_WEIGHTS_SHA256] = model.weights_sha256
    return {key: _tag_value(value) for key, value in tags.items()}


def _fixed(value: float, decimals: int) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.{decimals}f}"


def _tag_value(value) -> str:
    """Slicer splits the tag list at every '|' and has no escape, so '|' cannot appear in values."""
    return str(value).replace("|", "/")


# --- reading -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentTags:
    """What a segment's tags say about its node (`read_segment_tags`)."""

    node_id: str | None  # None: not a lymph-node segment of this engine
    seed_ras: tuple[float, float, float] | None  # None: missing or unreadable
    mask_checksum: str  # of the mask the engine wrote; "" when it never wrote one
    model: ModelIdentity | None
    # NodeResult keyword arguments: status, probability (NaN without a usable mask), label, measurements
    fields: dict = field(default_factory=dict)

    def node_result(self, mask: np.ndarray, bbox_start_kji, seed_ras=None) -> NodeResult:
        """A NodeResult of these facts around a (current) bounding-box mask; `seed_ras` where the
        tags have none."""
        stop = tuple(int(a) + int(n) for a, n in zip(bbox_start_kji, np.shape(mask)))
        return NodeResult(str(self.node_id or ""), self.seed_ras or tuple(seed_ras), tuple(bbox_start_kji),
                          stop, mask, model=self.model, **self.fields)


def read_segment_tags(tags: Mapping[str, str] | Callable[[str], str | None]) -> SegmentTags:
    """The inverse of segment_tags, from a dict of tags or a `get(key) -> str | None` callable.

    Missing or unreadable numbers are NaN, a missing status is ok, and a node whose status has no
    usable mask gets no probability and UNKNOWN_LABEL whatever its tags say.
    """
    get = tags.get if isinstance(tags, Mapping) else tags

    def text(key: str) -> str:
        return get(key) or ""

    status = text(TAG_STATUS) or node_status.OK
    usable = node_status.has_usable_mask(status)
    fields = {"status": status}
    for key, name, _decimals in _NUMBER_TAGS:
        fields[name] = _number(text(key)) if usable or name not in _PROBABILITY_FIELDS else math.nan
    label = text(TAG_PREDICTED_LABEL)
    fields["predicted_label"] = int(label) if usable and label.isdigit() else node_status.UNKNOWN_LABEL
    model_id, weights = text(TAG_MODEL_ID), text(TAG_WEIGHTS_SHA256)
    return SegmentTags(
        node_id=get(TAG_SEED_ID),
        seed_ras=_triple(text(TAG_SEED_RAS)),
        mask_checksum=text(TAG_MASK_HASH),
        model=ModelIdentity(model_id, weights) if model_id or weights else None,
        fields=fields,
    )


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _triple(text: str):
    try:
        values = tuple(float(v) for v in text.split())
    except ValueError:
        return None
    return values if len(values) == 3 and all(math.isfinite(v) for v in values) else None


# --- Slicer's serialised form (.seg.nrrd headers) -----------------------------------------------
def serialize_tags(tags: dict[str, str]) -> str:
    """Slicer's `key:value|` form, sorted by key as Slicer's std::map writes it."""
    for key in tags:
        if ":" in key or "|" in key:
            raise ValueError(f"segment tag key {key!r} must not contain ':' or '|'")
    return "".join(f"{key}:{_tag_value(value)}|" for key, value in sorted(tags.items()))


def parse_tags(serialized: str) -> dict[str, str]:
    """Inverse of serialize_tags, parsed as Slicer does (text after the last '|' is dropped)."""
    tags = {}
    for pair in serialized.split("|")[:-1]:
        key, colon, value = pair.partition(":")
        if colon:
            tags[key] = value
    return tags
