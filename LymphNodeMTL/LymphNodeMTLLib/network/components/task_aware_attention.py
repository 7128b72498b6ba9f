"""MA-MTLN task-aware attention (docs/methods.md, section 2).

- Segmentation-aware (top-down): in the decoder, each skip feature is gated by
  sigmoid(conv(cat(up, skip))) before it joins the upsampled feature `up`.
- Classification-aware (bottom-up): a path from the finest encoder scale to the coarsest with
  strided convolutions; at each scale the encoder feature is gated the same way by the path's
  feature and added to it. The path's features feed the metastasis head (pooled under the soft
  mask, M2ANet, instead of MA-MTLN's plain global pool: our patches hold several structures).

Instance norm (not MONAI AttentionBlock's batch norm) keeps every node independent of its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.blocks.dynunet_block import UnetUpBlock
from torch import nn

from ..norm_layer import monai_norm


class FeatureGate(nn.Module):
    """x * sigmoid(psi(act(conv(cat(g, x))))): gates `x` by a guide feature `g` on the same grid.

    Args:
        guide_channels: channels of g.
        channels: channels of x.
        inter_channels: channels of the intermediate 1x1x1 convolution.
        norm: MONAI norm name.
    """

    def __init__(self, guide_channels: int, channels: int, inter_channels: int | None = None,
                 norm: str = "instance"):
        super().__init__()
        inter = int(inter_channels or max(1, channels // 2))
        self.mix = Convolution(3, guide_channels + channels, inter, kernel_size=1, norm=monai_norm(norm),
                               act=("leakyrelu", {"negative_slope": 0.01}))
        self.psi = Convolution(3, inter, 1, kernel_size=1, conv_only=True)

    def gate(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The (B, 1, ...) gate in [0, 1]."""
        return torch.sigmoid(self.psi(self.mix(torch.cat([g, x], dim=1))))

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(g, x)


class SegmentationAwareDecoder(nn.Module):
    """Top-down gating of the skips of a DynUNet-block decoder.

    Args:
        channels: encoder channels per scale, finest first (the decoder runs coarsest to finest).
        norm: MONAI norm name.
    """

    def __init__(self, channels: Sequence[int], norm: str = "instance"):
        super().__init__()
        channels = [int(c) for c in channels]
        self.gates = nn.ModuleList(
            FeatureGate(channels[level - 1], channels[level - 1], norm=norm)
            for level in range(len(channels) - 1, 0, -1)
        )

    def forward(self, decoder: Sequence[UnetUpBlock], feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Runs `decoder` (UnetUpBlocks) with gated skips; returns every stage's output, coarsest first."""
        x = feats[-1]
        outputs = []
        for up_block, gate, skip in zip(decoder, self.gates, reversed(feats[:-1])):
            up = up_block.transp_conv(x)
            x = up_block.conv_block(torch.cat([up, gate(up, skip)], dim=1))
            outputs.append(x)
        return outputs


class ClassificationAwarePath(nn.Module):
    """Bottom-up path: c_0 = f_0; c_l = d_l + gate(d_l, f_l), d_l = strided conv(c_{l-1}).

    Args:
        channels: encoder channels per scale, finest first.
        norm: MONAI norm name.
    """

    def __init__(self, channels: Sequence[int], norm: str = "instance"):
        super().__init__()
        channels = [int(c) for c in channels]
        self.down = nn.ModuleList(
            Convolution(3, channels[level - 1], channels[level], strides=2, kernel_size=3, norm=monai_norm(norm),
                        act=("leakyrelu", {"negative_slope": 0.01}))
            for level in range(1, len(channels))
        )
        self.gates = nn.ModuleList(FeatureGate(channels[level], channels[level], norm=norm)
                                   for level in range(1, len(channels)))

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        c = feats[0]
        out = [c]
        for down, gate, f in zip(self.down, self.gates, feats[1:]):
            d = down(c)
            if d.shape[2:] != f.shape[2:]:  # odd grids: strided conv rounds differently from the encoder
                d = nn.functional.interpolate(d, size=f.shape[2:], mode="trilinear", align_corners=False)
            c = d + gate(d, f)
            out.append(c)
        return out
