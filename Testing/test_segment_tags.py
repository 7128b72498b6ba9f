"""The node-result contract in core: what a status means (node_status), and a NodeResult written as
segment tags and read back (segment_tags), from a dict or a getter, as the Slicer module reads a
vtkSegment's tags."""

import math

import numpy as np
import pytest
from LymphNodeMTLLib.core import node_status
from LymphNodeMTLLib.core.mask_checksum import mask_checksum
from LymphNodeMTLLib.core.model_identity import ModelIdentity
from LymphNodeMTLLib.core.node_result import NodeResult
from LymphNodeMTLLib.core.segment_tags import (
    LYMPH_NODE_TERMINOLOGY,
    TAG_MASK_HASH,
    TAG_PREDICTED_LABEL,
    TAG_PROBABILITY,
    TAG_SEED_ID,
    TAG_STATUS,
    TAG_WEIGHTS_SHA256,
    TERMINOLOGY_TAG,
    read_segment_tags,
    segment_tags,
)

MODEL = ModelIdentity("mtl-v1", "ab" * 32)


def _result(status=node_status.OK, probability=0.73456, label=1):
    mask = np.zeros((3, 4, 4), bool)
    mask[1, 1:3, 1:3] = True
    return NodeResult("4R", (1.5, -2.25, 3.0), (2, 3, 4), (5, 7, 8), mask, probability=probability,
                      predicted_label=label, volume_mm3=55.512, short_axis_mm=4.256, long_axis_mm=7.1,
                      mean_hu=31.26, sd_hu=12.0, status=status, mask_agreement=0.8123,
                      probability_low=0.70001, probability_high=0.76, field_of_view_mm=48.0, model=MODEL)


def test_status_predicates():
    assert [s for s in node_status.ALL if node_status.has_usable_mask(s)] == ["ok", "low_agreement",
                                                                               "registration_uncertain"]
    assert [s for s in node_status.ALL if not node_status.needs_review(s)] == ["ok"]
    # a table or segment written before statuses existed: read as ok
    assert node_status.has_usable_mask("") and not node_status.needs_review("")


def test_tags_read_back_into_the_results_fields():
    result = _result()
    tags = segment_tags(result)
    assert tags[TERMINOLOGY_TAG] == LYMPH_NODE_TERMINOLOGY and tags[TAG_PROBABILITY] == "0.7346"
    assert tags[TAG_MASK_HASH] == mask_checksum(result.mask, result.bbox_start_kji)
    assert tags[TAG_WEIGHTS_SHA256] == MODEL.weights_sha256
    for source in (tags, tags.get):  # a dict, or a getter as the Slicer module gives it
        back = read_segment_tags(source)
        assert back.node_id == "4R" and back.seed_ras == (1.5, -2.25, 3.0) and back.model == MODEL
        assert back.mask_checksum == tags[TAG_MASK_HASH]
        rebuilt = back.node_result(result.mask, result.bbox_start_kji)
        assert rebuilt.bbox_stop_kji == result.bbox_stop_kji and rebuilt.model == MODEL
        for name, decimals in (("probability", 4), ("probability_low", 4), ("probability_high", 4),
                               ("mask_agreement", 3), ("volume_mm3", 2), ("short_axis_mm", 2),
                               ("long_axis_mm", 2), ("mean_hu", 1), ("field_of_view_mm", 1)):
            assert getattr(rebuilt, name) == pytest.approx(getattr(result, name), abs=0.51 * 10 ** -decimals), name
        assert (rebuilt.status, rebuilt.predicted_label) == (result.status, result.predicted_label)
        assert segment_tags(rebuilt) == tags  # and written again, the same tags


def test_a_status_without_a_usable_mask_reads_back_without_probability_or_label():
    tags = segment_tags(_result(node_status.EMPTY_MASK, probability=0.9, label=1))
    assert tags[TAG_STATUS] == "empty_mask"
    fields = read_segment_tags(tags).fields
    assert fields["status"] == "empty_mask" and fields["predicted_label"] == node_status.UNKNOWN_LABEL
    assert all(math.isnan(fields[k]) for k in ("probability", "probability_low", "probability_high"))
    assert fields["volume_mm3"] == pytest.approx(55.51)  # measurements stay
    assert segment_tags(_result(node_status.EMPTY_MASK, label=-1))[TAG_PREDICTED_LABEL] == ""


def test_missing_or_foreign_tags_read_as_unknown():
    back = read_segment_tags({})
    assert back.node_id is None and back.seed_ras is None and back.model is None and back.mask_checksum == ""
    assert back.fields["status"] == "ok" and math.isnan(back.fields["probability"])
    assert back.fields["predicted_label"] == node_status.UNKNOWN_LABEL
    odd = read_segment_tags({TAG_SEED_ID: "7", "LymphNodeMTL.SeedRas": "1 2", TAG_PROBABILITY: "high"})
    assert odd.node_id == "7" and odd.seed_ras is None and math.isnan(odd.fields["probability"])


def test_a_reclassified_edit_keeps_the_checksum_of_the_engines_mask():
    result = _result()
    tags = segment_tags(result, engine_mask_checksum="abc", terminology="mine")
    assert tags[TAG_MASK_HASH] == "abc" and tags[TERMINOLOGY_TAG] == "mine"
