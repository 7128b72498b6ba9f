"""Segmentation losses for the node-mask head, selectable by name (docs/methods.md).

- "dice_ce": Dice + binary cross-entropy (M2ANet; the project's default, MONAI DiceCELoss).
- "jaccard_focal": MA-MTLN's -softJaccard + 0.1 * focal(gamma = 1). MONAI's Jaccard loss is
  1 - softJaccard: the same gradient as -softJaccard, shifted by one so a perfect mask scores 0.

Both work on single-channel logits (B, 1, D, H, W) with a sigmoid. `per_sample` gives one loss per
node, so pseudo-masked nodes can be weighted (see pseudo_masks.py); `forward` is the batch mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss, FocalLoss
from torch import nn

SEGMENTATION_LOSSES = ("dice_ce", "jaccard_focal")


class JaccardFocalLoss(nn.Module):
    """MA-MTLN segmentation loss: (1 - softJaccard) + focal_weight * focal(gamma).

    Args:
        focal_weight: weight of the focal term (MA-MTLN: 0.1).
        gamma: focusing parameter of the focal term (MA-MTLN: 1).
    """

    def __init__(self, focal_weight: float = 0.1, gamma: float = 1.0):
        super().__init__()
        self.focal_weight = float(focal_weight)
        self.jaccard = DiceLoss(sigmoid=True, jaccard=True, batch=False, reduction="none")
        self.focal = FocalLoss(gamma=gamma, use_softmax=False, reduction="none")

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B,) losses."""
        jac = self.jaccard(logits, target).flatten(1).mean(1)
        focal = self.focal(logits, target).flatten(1).mean(1)
        return jac + self.focal_weight * focal

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.per_sample(logits, target).mean()


class DiceCEPerSample(nn.Module):
    """MONAI DiceCELoss (sigmoid, per-sample Dice), with a per-node form for weighting.

    Args:
        lambda_ce: weight of the cross-entropy term.
    """

    def __init__(self, lambda_ce: float = 1.0):
        super().__init__()
        self.lambda_ce = float(lambda_ce)
        self.batch_loss = DiceCELoss(sigmoid=True, batch=False, reduction="mean", lambda_ce=lambda_ce)
        self.dice = DiceLoss(sigmoid=True, batch=False, reduction="none")

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dice = self.dice(logits, target).flatten(1).mean(1)
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
        return dice + self.lambda_ce * ce

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.batch_loss(logits, target)


def build_segmentation_loss(name: str = "dice_ce", lambda_ce: float = 1.0) -> nn.Module:
    """The segmentation loss called `name` (one of SEGMENTATION_LOSSES)."""
    if name == "dice_ce":
        return DiceCEPerSample(lambda_ce)
    if name == "jaccard_focal":
        return JaccardFocalLoss()
    raise ValueError(f"unknown segmentation loss {name!r}; use one of {', '.join(SEGMENTATION_LOSSES)}")


def weighted_mean(per_sample: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i L_i / (number of nodes with w_i > 0): a pseudo-masked node counts as a node but
    its loss is down-weighted (LA-Net), so true masks are not diluted by the weights themselves."""
    counted = (weights > 0).sum().clamp_min(1)
    return (per_sample * weights.to(per_sample.dtype)).sum() / counted
