"""MA-MTLN attention blocks (docs/methods.md, section 2).

- VisualAttentionBlock: parallel dilated convolution branches, each gating its input,
  b_d = sigmoid(conv_d(x)) * x; the branches are concatenated, mixed by a 1x1x1 convolution, and
  added to the input (residual).
- AdaptiveSpatialAttention: mixes a scale's own feature x with the global fused feature g,
  att = A(x) * x * a0 + A(g) * g * a1, with [a0, a1] = softmax(fc([avgpool(x), avgpool(g)])) and A a
  shared convolution stack ending in a sigmoid (one spatial map per input).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

from ..norm_layer import monai_norm


class VisualAttentionBlock(nn.Module):
    """Args:
        channels: input = output channels.
        dilations: one gated branch per dilation.
        norm: MONAI norm name for the 1x1x1 mixing convolution.
    """

    def __init__(self, channels: int, dilations: Sequence[int] = (1, 2, 3), norm: str = "instance"):
        super().__init__()
        self.branches = nn.ModuleList(
            Convolution(3, channels, channels, kernel_size=3, dilation=int(d), conv_only=True)
            for d in dilations
        )
        self.mix = Convolution(3, channels * len(self.branches), channels, kernel_size=1,
                               norm=monai_norm(norm), act=("leakyrelu", {"negative_slope": 0.01}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated = [torch.sigmoid(branch(x)) * x for branch in self.branches]
        return x + self.mix(torch.cat(gated, dim=1))


class AdaptiveSpatialAttention(nn.Module):
    """Args:
        channels: channels of x and g (equal).
        hidden: channels inside the shared attention stack A.
        norm: MONAI norm name inside A.
    """

    def __init__(self, channels: int, hidden: int | None = None, norm: str = "instance"):
        super().__init__()
        hidden = hidden or max(1, channels // 2)
        self.attention = nn.Sequential(
            Convolution(3, channels, hidden, kernel_size=3, norm=monai_norm(norm),
                        act=("leakyrelu", {"negative_slope": 0.01})),
            Convolution(3, hidden, 1, kernel_size=1, conv_only=True),
            nn.Sigmoid(),
        )
        self.mixing = nn.Linear(2 * channels, 2)
        self.last_alpha: torch.Tensor | None = None  # (B, 2), for inspection and tests

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=(2, 3, 4)), g.mean(dim=(2, 3, 4))], dim=1)
        alpha = torch.softmax(self.mixing(pooled), dim=1)
        self.last_alpha = alpha.detach()
        a0 = alpha[:, 0].view(-1, 1, 1, 1, 1)
        a1 = alpha[:, 1].view(-1, 1, 1, 1, 1)
        return self.attention(x) * x * a0 + self.attention(g) * g * a1
