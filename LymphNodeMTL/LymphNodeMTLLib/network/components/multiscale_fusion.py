"""MA-MTLN shared multi-scale fusion (docs/methods.md, section 2).

Every encoder scale is projected to `fused_channels` (1x1x1), resampled to one fusion grid and
summed with BiFPN-style normalised weights w_s = relu(p_s) / (sum relu(p) + 1e-4); a visual
attention block refines the fused feature g. Each scale then mixes its own feature with g through
adaptive spatial attention, and the result is added back to the scale's feature (1x1x1 projection,
residual), so shapes are unchanged and the decoder and heads work as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from .visual_attention import AdaptiveSpatialAttention, VisualAttentionBlock

FUSION_EPS = 1e-4


def normalised_fusion_weights(p: torch.Tensor, eps: float = FUSION_EPS) -> torch.Tensor:
    """BiFPN fast normalised fusion: relu(p) / (sum relu(p) + eps)."""
    w = F.relu(p)
    return w / (w.sum() + eps)


def resize_to(x: torch.Tensor, size) -> torch.Tensor:
    """Area-average down (keeps mass), trilinear up, to a feature map's spatial size."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    if all(s <= t for s, t in zip(size, x.shape[2:])):
        return F.adaptive_avg_pool3d(x, size)
    return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=False)


class MultiScaleFusion(nn.Module):
    """Args:
        channels: encoder channels per scale, finest first.
        fused_channels: channels of the fused feature (default: the finest scale's).
        fusion_scale: index of the scale whose grid holds the fused feature (default 1, half the
            patch grid: the finest grid is costly on CPUs and adds little context).
        dilations: dilations of the visual attention block.
        norm: MONAI norm name.
    """

    def __init__(
        self,
        channels: Sequence[int],
        fused_channels: int | None = None,
        fusion_scale: int = 1,
        dilations: Sequence[int] = (1, 2, 3),
        norm: str = "instance",
    ):
        super().__init__()
        channels = [int(c) for c in channels]
        fc = int(fused_channels or channels[0])
        self.fusion_scale = min(int(fusion_scale), len(channels) - 1)
        self.project = nn.ModuleList(Convolution(3, c, fc, kernel_size=1, conv_only=True) for c in channels)
        self.fusion_logits = nn.Parameter(torch.ones(len(channels)))
        self.visual_attention = VisualAttentionBlock(fc, dilations, norm)
        self.spatial_attention = nn.ModuleList(AdaptiveSpatialAttention(fc, norm=norm) for _ in channels)
        self.back = nn.ModuleList(Convolution(3, fc, c, kernel_size=1, conv_only=True) for c in channels)

    def fusion_weights(self) -> torch.Tensor:
        return normalised_fusion_weights(self.fusion_logits)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        projected = [proj(f) for proj, f in zip(self.project, features)]
        grid = projected[self.fusion_scale].shape[2:]
        w = self.fusion_weights().to(projected[0].dtype)
        g = sum(w[s] * resize_to(p, grid) for s, p in enumerate(projected))
        g = self.visual_attention(g)
        out = []
        for f, p, att, back in zip(features, projected, self.spatial_attention, self.back):
            out.append(f + back(att(p, resize_to(g, p.shape[2:]))))
        return out
