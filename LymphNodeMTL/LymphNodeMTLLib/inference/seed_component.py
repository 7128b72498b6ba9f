"""Keep only the part of a node mask that is connected to the radiologist's seed."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# 26-connectivity: a thin oblique node on thick slices is still one object.
_STRUCTURE = np.ones((3, 3, 3), dtype=bool)


def keep_seed_component(mask: np.ndarray, seed_kji_local: np.ndarray, spacing_kji) -> np.ndarray:
    """Component of `mask` that contains the seed voxel; if the seed voxel is outside the mask,
    the component nearest to the seed (in mm). Returns an all-false mask for an empty input."""
    if not mask.any():
        return mask.copy()
    labels, count = ndimage.label(mask, structure=_STRUCTURE)
    if count == 1:
        return labels == 1
    seed_idx = np.round(seed_kji_local).astype(int)
    if np.all(seed_idx >= 0) and np.all(seed_idx < mask.shape):
        at_seed = labels[tuple(seed_idx)]
        if at_seed:
            return labels == at_seed
    coords = np.argwhere(labels > 0)
    d2 = (((coords - seed_kji_local) * np.asarray(spacing_kji)) ** 2).sum(axis=1)
    nearest = labels[tuple(coords[int(np.argmin(d2))])]
    return labels == nearest
