"""How far a mask lies from its truth, on the CT grid: the 95th-percentile surface distance (Dice
is core/mask_dice.py, which the engine shares)."""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance


def hd95_mm(a: np.ndarray, b: np.ndarray, spacing_kji) -> float:
    """95th-percentile symmetric surface distance (MONAI), in mm on the CT grid."""
    if not a.any() or not b.any():
        return float("nan")
    pred = torch.from_numpy(a)[None, None]
    gt = torch.from_numpy(b)[None, None]
    d = compute_hausdorff_distance(pred, gt, percentile=95, spacing=[float(s) for s in spacing_kji])
    return float(d.item())
