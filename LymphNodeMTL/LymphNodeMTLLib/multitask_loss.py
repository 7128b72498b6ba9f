"""The multi-task loss: segmentation (Dice + CE) and metastasis classification (BCE), balanced by
learnable uncertainty weights (MA-MTLN). Nodes without a mask train only the classification head,
nodes without a label only the mask head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from .uncertainty_weighting import UncertaintyWeighting


class MultiTaskLoss(nn.Module):
    """Args:
        seg_weight_ce: weight of the cross-entropy term inside DiceCE.
    """

    def __init__(self, seg_weight_ce: float = 1.0):
        super().__init__()
        self.seg = DiceCELoss(sigmoid=True, batch=False, reduction="mean", lambda_ce=seg_weight_ce)
        self.balance = UncertaintyWeighting(2)

    def forward(self, out: dict, mask: torch.Tensor, has_mask: torch.Tensor,
                label: torch.Tensor, has_label: torch.Tensor) -> dict:
        """mask (B,1,D,H,W) float; has_mask (B,) bool; label (B,) float; has_label (B,) bool."""
        zero = out["metastasis_logit"].sum() * 0.0
        seg = zero
        if bool(has_mask.any()):
            idx = has_mask.nonzero().flatten()
            seg = self.seg(out["mask_logits"][idx], mask[idx])
        cls = zero
        if bool(has_label.any()):
            idx = has_label.nonzero().flatten()
            cls = F.binary_cross_entropy_with_logits(out["metastasis_logit"][idx], label[idx])
        total = self.balance([seg, cls])
        return {"total": total, "seg": seg.detach(), "cls": cls.detach()}
