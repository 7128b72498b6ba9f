"""SD-MdaNet mixed classification/regression head (docs/methods.md, section 3; our reading).

One MLP with two outputs: the metastasis logit and a continuous value (for us the node's short axis,
in units of 10 mm, measured from its mask). Loss: CE on the class + lambda * MSE on the value, the
MSE only over nodes whose mask (hence target) is known.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .auxiliary_heads import SHORT_AXIS_UNIT_MM, short_axis_from_mask


class MixedHead(nn.Module):
    """Args:
        in_features: width of the pooled feature vector.
        hidden: hidden width.
        dropout: dropout before the output layer.
    """

    def __init__(self, in_features: int, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_features, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 2))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (metastasis logit (B,), value (B,))."""
        out = self.mlp(features)
        return out[:, 0], out[:, 1]


class MixedLoss(nn.Module):
    """CE(label) + lambda * MSE(value, short axis / 10 mm).

    Args:
        lam: weight of the regression term.
    """

    def __init__(self, lam: float = 0.1):
        super().__init__()
        self.lam = float(lam)

    def forward(self, logit, value, label, has_label, mask, has_mask, spacing_mm) -> torch.Tensor:
        """spacing_mm: (B,) patch voxel size (for the short axis measured from the mask)."""
        zero = logit.sum() * 0.0
        ce = zero
        if bool(has_label.any()):
            idx = has_label.nonzero().flatten()
            ce = F.binary_cross_entropy_with_logits(logit[idx].float(), label[idx].float())
        mse = zero
        if bool(has_mask.any()):
            idx = has_mask.nonzero().flatten()
            target = short_axis_from_mask(mask[idx], spacing_mm[idx.to(spacing_mm.device)]) / SHORT_AXIS_UNIT_MM
            mse = F.mse_loss(value[idx].float(), target)
        return ce + self.lam * mse
