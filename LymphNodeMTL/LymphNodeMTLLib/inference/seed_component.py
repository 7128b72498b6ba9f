"""Keep only the part of a node mask that is connected to the radiologist's seed (and to the
positive prompts, when the node has them)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# 26-connectivity: a thin oblique node on thick slices is still one object.
_STRUCTURE = np.ones((3, 3, 3), dtype=bool)


def keep_seed_component(mask: np.ndarray, seed_kji_local: np.ndarray, spacing_kji) -> np.ndarray:
    """Components of `mask` that contain the seed voxel, or any of several points ((K, 3): the seed
    first, then positive clicks); if none does, the component nearest to the first point (in mm).
    Returns an all-false mask for an empty input."""
    if not mask.any():
        return mask.copy()
    labels, count = ndimage.label(mask, structure=_STRUCTURE)
    if count == 1:
        return labels == 1
    points = np.asarray(seed_kji_local, dtype=float).reshape(-1, 3)
    held = set()
    for idx in np.round(points).astype(int):
        if np.all(idx >= 0) and np.all(idx < mask.shape) and labels[tuple(idx)]:
            held.add(int(labels[tuple(idx)]))
    if held:
        return np.isin(labels, sorted(held))
    coords = np.argwhere(labels > 0)
    d2 = (((coords - points[0]) * np.asarray(spacing_kji)) ** 2).sum(axis=1)
    nearest = labels[tuple(coords[int(np.argmin(d2))])]
    return labels == nearest
