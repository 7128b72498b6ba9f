"""The click a simulated radiologist makes to correct a mask: at the centre of the largest error.

The rule of interactive-segmentation benchmarks (and of nnInteractive's and DeepEdit's training):
compare the mask with the truth, take the largest connected region of error, and click at its
innermost voxel (the farthest from the region's edge, in mm): positive where the mask missed the
node, negative where it took what is not the node. Training simulates clicks this way on the
network's own predictions, and evaluation counts how many it takes to reach a Dice.
MONAI's DeepGrow/DeepEdit transforms draw the click at random inside the error instead, and its
largest-component helper needs scikit-image; scipy.ndimage gives the deterministic rule directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class SimulatedClick:
    """A click at `index` (array index, same order as the masks'); positive: it belongs to the node."""

    index: tuple[int, int, int]
    positive: bool
    region_voxels: int  # the size of the error region it corrects


def error_region_click(predicted: np.ndarray, truth: np.ndarray, spacing=(1.0, 1.0, 1.0),
                       exclude: np.ndarray | None = None) -> SimulatedClick | None:
    """The click at the centre of the largest error region of `predicted` against `truth` (bool
    arrays of one shape; `spacing`: voxel size per array axis, for the region's centre);
    None when there is no error. `exclude`: voxels never clicked (e.g. where clicks already are).

    Regions are compared by size (one grid: voxels count as volume); a false-negative region gives
    a positive click, a false-positive region a negative one. The centre is the voxel of the region farthest from
    its edge; of several as deep, the one nearest their middle (first in array order on a tie)."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    best = None
    for positive, error in ((True, truth & ~predicted), (False, predicted & ~truth)):
        if exclude is not None:
            error = error & ~exclude
        if not error.any():
            continue
        labels, count = ndimage.label(error)
        sizes = np.bincount(labels.ravel())[1:]
        biggest = int(np.argmax(sizes)) + 1
        if best is None or sizes[biggest - 1] > best[0]:
            best = (int(sizes[biggest - 1]), positive, labels == biggest, int(sizes[biggest - 1]))
    if best is None:
        return None
    _, positive, region, voxels = best
    # distance to the region's edge, the array's border counting as an edge too
    depth = ndimage.distance_transform_edt(np.pad(region, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    # of the deepest voxels (a slab's are a whole plane), the one nearest their middle
    deepest = np.argwhere(depth >= depth.max() - 1e-6)
    middle = deepest.mean(axis=0)
    index = deepest[int(np.argmin((((deepest - middle) * np.asarray(spacing)) ** 2).sum(axis=1)))]
    return SimulatedClick(tuple(int(i) for i in index), positive, voxels)
