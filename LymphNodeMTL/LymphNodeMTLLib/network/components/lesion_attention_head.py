"""LA-Net lesion-aware attention classifier (docs/methods.md, section 5).

At each encoder scale a CBAM block (channel gate from average- and max-pooled descriptors through a
shared MLP, then a spatial gate from a 7x7x7 convolution of the channel-mean and channel-max maps)
refines the feature a_s and a 1x1x1 convolution turns it into a one-channel map. The maps are
resampled to one coarse grid and fused (1x1x1 convolution) into the lesion map M (logits). The
classifier sees f'_s = a_s + M_s * a_s (M_s = sigmoid(M) on scale s's grid), global-average-pooled
per scale and concatenated, then an MLP. An alternative to the M2ANet soft-mask pooling head.

Where a mask is given (a radiologist's corrected mask, or the true mask under teacher forcing),
it replaces sigmoid(M) as the attention map, as the soft mask does in the M2ANet head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from .mixed_head import MixedHead
from .multiscale_fusion import resize_to


class CBAM(nn.Module):
    """Convolutional block attention (channel then spatial), 3-D.

    Args:
        channels: feature channels.
        reduction: hidden width of the channel MLP is channels // reduction (at least 1).
        spatial_kernel: kernel of the spatial gate's convolution.
    """

    def __init__(self, channels: int, reduction: int = 2, spatial_kernel: int = 7):
        super().__init__()
        hidden = max(1, channels // int(reduction))
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))
        self.spatial = Convolution(3, 2, 1, kernel_size=spatial_kernel, conv_only=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        avg = self.mlp(x.mean(dim=(2, 3, 4)))
        mx = self.mlp(x.amax(dim=(2, 3, 4)))
        x = x * torch.sigmoid(avg + mx).view(b, c, 1, 1, 1)
        desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(desc))


class LesionAttentionHead(nn.Module):
    """Args:
        channels: feature channels per scale, finest first.
        hidden: width of the classifier MLP.
        dropout: dropout before the classifier's output.
        map_scale: index of the scale whose grid holds the lesion map (1: half the patch grid).
        mixed: two outputs (logit, regressed value) as in the SD-MdaNet mixed head.
    """

    def __init__(self, channels: Sequence[int], hidden: int = 64, dropout: float = 0.1, map_scale: int = 1,
                 mixed: bool = False):
        super().__init__()
        channels = [int(c) for c in channels]
        self.map_scale = min(int(map_scale), len(channels) - 1)
        self.cbam = nn.ModuleList(CBAM(c) for c in channels)
        self.to_map = nn.ModuleList(Convolution(3, c, 1, kernel_size=1, conv_only=True) for c in channels)
        self.fuse = Convolution(3, len(channels), 1, kernel_size=1, conv_only=True)
        self.mixed = bool(mixed)
        if self.mixed:
            self.classifier = MixedHead(sum(channels), hidden, dropout)
        else:
            self.classifier = nn.Sequential(
                nn.Linear(sum(channels), hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, feats: Sequence[torch.Tensor], mask: torch.Tensor | None = None,
                use_mask: torch.Tensor | None = None) -> dict:
        """feats: per-scale features; mask: optional (B, 1, D, H, W) given mask; use_mask: (B,) bool,
        which nodes use it (all when None). Returns {"logit", "value" (or None), "map_logits"}."""
        refined = [cbam(f) for cbam, f in zip(self.cbam, feats)]
        grid = refined[self.map_scale].shape[2:]
        maps = [resize_to(m(a), grid) for m, a in zip(self.to_map, refined)]
        map_logits = self.fuse(torch.cat(maps, dim=1))
        attention = torch.sigmoid(map_logits)
        if mask is not None:
            given = F.adaptive_avg_pool3d(mask.to(attention.dtype), grid)
            if use_mask is None:
                attention = given
            else:
                attention = torch.where(use_mask.view(-1, 1, 1, 1, 1), given, attention)
        pooled = []
        for a in refined:
            m = resize_to(attention, a.shape[2:]).to(a.dtype)
            pooled.append((a + m * a).mean(dim=(2, 3, 4)))
        features = torch.cat(pooled, dim=1)
        if self.mixed:
            logit, value = self.classifier(features)
        else:
            logit, value = self.classifier(features).squeeze(1), None
        return {"logit": logit, "value": value, "map_logits": map_logits}

