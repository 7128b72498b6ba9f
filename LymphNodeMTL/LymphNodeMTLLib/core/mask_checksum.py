"""A node mask's fingerprint: tells a radiologist-edited segment from the one the engine wrote.

The engine records the checksum as a segment tag when it writes a mask (.seg.nrrd and Slicer alike);
a segment whose current mask has another checksum has been edited and is never overwritten
without an explicit request.
"""

from __future__ import annotations

import hashlib

import numpy as np


def mask_bounds(mask: np.ndarray):
    """Half-open [start, stop) box of a mask's true voxels along k, j, i; a 1-voxel box if empty."""
    start, stop = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        if hits.size == 0:
            return (0, 0, 0), (1, 1, 1)
        start.append(int(hits[0]))
        stop.append(int(hits[-1]) + 1)
    return tuple(start), tuple(stop)


def mask_checksum(mask: np.ndarray, start_kji=(0, 0, 0)) -> str:
    """SHA-1 of a mask's voxels and where they sit in the CT grid; padding does not change it, so a
    bounding-box sub-mask and the same mask in the whole grid give the same checksum."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return "empty"
    start, stop = mask_bounds(mask)
    tight = mask[tuple(slice(a, b) for a, b in zip(start, stop))]
    digest = hashlib.sha1()
    digest.update(np.add(start, start_kji).astype(np.int64).tobytes())
    digest.update(np.asarray(tight.shape, dtype=np.int64).tobytes())
    digest.update(np.packbits(tight).tobytes())
    return digest.hexdigest()
