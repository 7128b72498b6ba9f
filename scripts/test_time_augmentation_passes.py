"""The four test-time augmentation passes the engine used for its uncertainty until the one-pass
mask stability (inference/mask_confidence.py) replaced them; kept here as the baseline that
compare_uncertainty_signals.py scores the candidates against.

Uncertainty per node from test-time augmentation: the same node looked at a few more times,
with the seed moved within the node and the patch flipped, through the same field of view.

A node whose edge is clear gives the same mask however it is looked at; one that merges with a
neighbour of the same density, or that the network barely sees, does not. The spread is reported
as the mask agreement (mean pairwise Dice of all passes, the plain pass included) and as the
interval of the metastasis probability over the passes. The reported mask and probability stay
those of the plain pass.

Shifts are whole patch voxels and flips are along patch axes, so every pass's mask maps exactly
onto the plain pass's grid: no resampling blurs the comparison.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from LymphNodeMTLLib.inference.seed_component import keep_seed_component

# Seed jitter: at most this far (the training jitter), and well inside the node (a share of the
# radius of a ball of the node's volume), at least one patch voxel.
MAX_JITTER_MM = 2.0
JITTER_RADIUS_SHARE = 0.35
# Below this agreement a node is flagged for review (low_agreement). Measured with the bundled
# model: clean spheres of 20-80 mm agree at 0.95-0.97 and of 4 mm at 0.86-0.91 (a one-voxel shift
# moves much of a small mask's boundary); a blob centred on the face of a same-density slab at
# 0.33-0.40; real lesions the model gets about right at 0.93, badly at 0.64-0.76.
LOW_AGREEMENT = 0.8


@dataclass(frozen=True)
class Augmentation:
    """One pass: patch flipped along `flip_dims` (of the (N, N, N) patch), seed shifted by
    `direction` (z, y, x patch axes; unit steps) times the node's jitter in voxels."""

    flip_dims: tuple[int, ...]
    direction: tuple[int, int, int]


# Four passes, each flipping a different set of axes and moving the seed a different way, so
# together they probe all three axes in both directions.
PASSES = (
    Augmentation((2,), (0, 0, 1)),
    Augmentation((1,), (0, -1, 0)),
    Augmentation((0,), (1, 0, 0)),
    Augmentation((0, 1, 2), (-1, 1, -1)),
)


def jitter_voxels(mask: np.ndarray) -> int:
    """Seed jitter (patch voxels) for a node with this patch mask."""
    radius_vox = (3.0 * max(int(mask.sum()), 1) / (4.0 * np.pi)) ** (1.0 / 3.0)
    return max(1, int(round(JITTER_RADIUS_SHARE * radius_vox)))


def jitter_limit_voxels(spacing_mm: float) -> int:
    return max(1, int(MAX_JITTER_MM // spacing_mm))


def pass_offsets(mask: np.ndarray, spacing_mm: float, passes=PASSES) -> list[np.ndarray]:
    """Per pass, the seed's shift in patch voxels (z, y, x)."""
    step = min(jitter_voxels(mask), jitter_limit_voxels(spacing_mm))
    return [np.asarray(p.direction, dtype=int) * step for p in passes]


def pass_mask(probability: np.ndarray, offset: np.ndarray, threshold: float, spacing_mm: float) -> np.ndarray:
    """A pass's (N, N, N) probability (already flipped back) -> its seed component."""
    n = probability.shape[-1]
    centre = np.full(3, (n - 1) / 2.0)
    return keep_seed_component(probability > threshold, centre, (spacing_mm,) * 3)


def mean_pairwise_dice(masks: list[np.ndarray], offsets: list[np.ndarray]) -> float:
    """Mean Dice over all pairs of patch masks, each placed at its own offset (patch voxels) on a
    common grid. Two empty masks agree (1)."""
    pad = int(max(np.abs(o).max() for o in offsets)) if offsets else 0
    n = masks[0].shape[0]
    placed = []
    for mask, offset in zip(masks, offsets):
        canvas = np.zeros((n + 2 * pad,) * 3, dtype=bool)
        lo = pad + np.asarray(offset, dtype=int)
        canvas[lo[0]:lo[0] + n, lo[1]:lo[1] + n, lo[2]:lo[2] + n] = mask
        placed.append(canvas)
    scores = []
    for a, b in itertools.combinations(placed, 2):
        total = int(a.sum()) + int(b.sum())
        scores.append(1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total)
    return float(np.mean(scores)) if scores else 1.0
