"""The engine's output for one node."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .model_identity import ModelIdentity


@dataclass
class NodeResult:
    """One node's mask, metastasis probability and measurements.

    The mask is stored as a bounding box in the CT grid plus a boolean sub-array, so 200 nodes in a
    512x512x300 CT cost kilobytes, not gigabytes. `bbox_start_kji`/`bbox_stop_kji` are half-open
    voxel index ranges [start, stop) along k, j, i.
    """

    node_id: str
    seed_ras: tuple[float, float, float]
    bbox_start_kji: tuple[int, int, int]
    bbox_stop_kji: tuple[int, int, int]
    mask: np.ndarray  # bool, shape = stop - start
    probability: float = float("nan")
    predicted_label: int = 0
    volume_mm3: float = 0.0
    short_axis_mm: float = 0.0
    long_axis_mm: float = 0.0
    mean_hu: float = float("nan")
    sd_hu: float = float("nan")
    # what the engine can say about this result (core/node_status.py) and how sure it is
    status: str = "ok"
    mask_agreement: float = float("nan")  # the mask's stability under a threshold change (mask_confidence.py)
    probability_low: float = float("nan")  # an interval of the probability, where an engine gives one
    probability_high: float = float("nan")
    field_of_view_mm: float = float("nan")  # edge of the patch the mask was taken from
    # what the network said of a node whose status clears its probability (evaluation scores it)
    network_probability: float = float("nan")
    model: ModelIdentity | None = None  # the model that computed the probability
    extra: dict = field(default_factory=dict)

    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.bbox_start_kji, self.bbox_stop_kji))

    def full_mask(self, shape_kji) -> np.ndarray:
        """The mask in the whole CT grid (allocates a full volume: for writers and tests)."""
        out = np.zeros(shape_kji, dtype=bool)
        out[self.slices()] = self.mask
        return out

    @property
    def is_empty(self) -> bool:
        return not bool(self.mask.any())
