"""How sure the network is of a node's mask, read from the one pass the node already had.

The mask is the seed's component of the network's probability above the mask threshold (0.5). A
node whose edge the network sees keeps nearly the same mask whatever the threshold: its probability
falls from above 0.9 to below 0.1 within a voxel of the edge. A node it merges with a neighbour of
the same density, loses in a larger structure, or barely sees does not: its probability fades over
several voxels, or a bridge to a neighbour opens at a low threshold. The stability is the Dice of
the seed components above 0.1 and above 0.9 (STABILITY_THRESHOLDS); below LOW_STABILITY the node is
flagged for review (`low_agreement`). Its cost is two connected-component labellings of the patch.

It replaced four test-time augmentation passes (the seed moved within the node, the patch
flipped), four more network passes per node. scripts/compare_uncertainty_signals.py scored every
candidate from one run on the stress set and the real lesions (docs/performance.md, "Uncertainty
from one pass"): with the threshold chosen on half the cases, on the other half this one flags all
20 masks with Dice < 0.5 (the four passes: 19) and 14.9 % of those with Dice >= 0.8 (20.8 %).
"""

from __future__ import annotations

import numpy as np

from ..core.mask_dice import dice_score
from .seed_component import keep_seed_component

STABILITY_THRESHOLDS = (0.1, 0.9)
LOW_STABILITY = 0.861


def seed_component_above(probability: np.ndarray, threshold: float, spacing_mm: float) -> np.ndarray:
    """The seed's (patch centre's) component of `probability` > `threshold` on an (N, N, N) patch."""
    n = probability.shape[-1]
    return keep_seed_component(probability > threshold, np.full(3, (n - 1) / 2.0), (spacing_mm,) * 3)


def threshold_stability(probability: np.ndarray, spacing_mm: float,
                        thresholds: tuple[float, float] = STABILITY_THRESHOLDS) -> float:
    """Dice of the seed components of an (N, N, N) patch probability above the low and the high
    threshold (module docstring)."""
    low, high = thresholds
    return dice_score(seed_component_above(probability, low, spacing_mm),
                seed_component_above(probability, high, spacing_mm))
