"""MA-MTLN deep supervision (docs/methods.md, section 2).

1x1x1 convolution heads on intermediate decoder features, upsampled to the patch grid; the
segmentation loss is a weighted sum over the auxiliary and final outputs, weights 0.8 / 0.9 / 1.0
(coarsest auxiliary first, final output last).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetOutBlock
from torch import nn

DEEP_SUPERVISION_WEIGHTS = (0.8, 0.9, 1.0)


class DeepSupervisionHeads(nn.Module):
    """One 1x1x1 mask head per intermediate feature map.

    Args:
        in_channels: channels of each supervised feature map, coarsest first.
    """

    def __init__(self, in_channels: Sequence[int]):
        super().__init__()
        self.heads = nn.ModuleList(UnetOutBlock(3, int(c), 1) for c in in_channels)

    def forward(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> list[torch.Tensor]:
        """features: maps matching `in_channels`; returns (B, 1, *size) logits, coarsest first."""
        return [
            F.interpolate(head(f), size=tuple(size), mode="trilinear", align_corners=False)
            for head, f in zip(self.heads, features)
        ]


def supervision_weights(num_aux: int, weights: Sequence[float] = DEEP_SUPERVISION_WEIGHTS) -> tuple[float, ...]:
    """Weights for `num_aux` auxiliary outputs + the final one: the last num_aux + 1 of `weights`
    (a shallow network with one auxiliary output uses 0.9 / 1.0)."""
    weights = tuple(float(w) for w in weights)
    if num_aux + 1 > len(weights):
        raise ValueError(f"{num_aux} auxiliary outputs need {num_aux + 1} weights, got {len(weights)}")
    return weights[len(weights) - num_aux - 1:]


def deep_supervision_loss(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    aux_logits: Sequence[torch.Tensor],
    final_logits: torch.Tensor,
    target: torch.Tensor,
    weights: Sequence[float] = DEEP_SUPERVISION_WEIGHTS,
) -> torch.Tensor:
    """sum_i w_i * loss_fn(output_i, target) over the auxiliary outputs (coarsest first) and the final."""
    outputs = list(aux_logits) + [final_logits]
    w = supervision_weights(len(aux_logits), weights)
    total = final_logits.new_zeros(())
    for weight, logits in zip(w, outputs):
        total = total + weight * loss_fn(logits, target)
    return total
