"""How sure the network is of a node's mask, read from the one pass the node already had.

The mask is the seed's component of the network's probability above the mask threshold (0.5). A
node whose edge the network sees keeps nearly the same mask when that threshold moves (the
probability falls from near 1 to near 0 within a voxel or two of the edge); a node it merges with a
neighbour of the same density, loses in a larger structure, or barely sees, does not: its
probability fades over many voxels, or a bridge to a neighbour opens or closes. The stability is
the Dice of the seed components at a low and a high threshold (STABILITY_THRESHOLDS); below
LOW_STABILITY the node is flagged for review (`low_agreement`).

It replaced four test-time augmentation passes (the seed moved within the node, the patch
flipped), which cost four more network passes per node: on the stress set it flags as many of the
masks with Dice < 0.5 and fewer of those with Dice >= 0.8 (docs/performance.md, "Uncertainty from
one pass"; scripts/compare_uncertainty_signals.py scores every candidate from one run).
"""

from __future__ import annotations

import numpy as np

from .seed_component import keep_seed_component

STABILITY_THRESHOLDS = (0.1, 0.9)
LOW_STABILITY = 0.861


def seed_component_above(probability: np.ndarray, threshold: float, spacing_mm: float) -> np.ndarray:
    """The seed's (patch centre's) component of `probability` > `threshold` on an (N, N, N) patch."""
    n = probability.shape[-1]
    return keep_seed_component(probability > threshold, np.full(3, (n - 1) / 2.0), (spacing_mm,) * 3)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; two empty masks agree (1)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def threshold_stability(probability: np.ndarray, spacing_mm: float,
                        thresholds: tuple[float, float] = STABILITY_THRESHOLDS) -> float:
    """Dice of the seed components of an (N, N, N) patch probability above the low and the high
    threshold (module docstring)."""
    low, high = thresholds
    return dice(seed_component_above(probability, low, spacing_mm),
                seed_component_above(probability, high, spacing_mm))
