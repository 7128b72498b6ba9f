"""SD-MdaNet dense-attention encoder (docs/methods.md, section 3; our reading).

Each scale: an entry convolution (strided below the finest scale), a DenseNet-style block (MONAI
ConvDenseBlock: every layer sees the concatenation of all earlier outputs), a 1x1x1 transition back
to the scale's width, squeeze-excitation gating (MONAI ChannelSELayer), and a residual from the
entry. Output widths equal `channels`, so the decoder and heads are those of the base network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import ChannelSELayer, Convolution
from monai.networks.blocks.denseblock import ConvDenseBlock
from torch import nn

from ..norm_layer import monai_norm

ACT = ("leakyrelu", {"negative_slope": 0.01})


class DenseAttentionBlock(nn.Module):
    """Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the entry convolution (2 halves the grid).
        growth: channels each dense layer adds.
        layers: dense layers.
        norm: MONAI norm name.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, growth: int | None = None,
                 layers: int = 2, norm: str = "instance"):
        super().__init__()
        growth = int(growth or max(2, out_channels // 2))
        self.entry = Convolution(3, in_channels, out_channels, strides=stride, kernel_size=3,
                                 norm=monai_norm(norm), act=ACT)
        self.dense = ConvDenseBlock(3, out_channels, [growth] * int(layers), norm=monai_norm(norm), act=ACT)
        self.transition = Convolution(3, out_channels + growth * int(layers), out_channels, kernel_size=1,
                                      norm=monai_norm(norm), act=None)
        self.excitation = ChannelSELayer(3, out_channels, r=max(1, min(2, out_channels)),
                                         acti_type_1=("relu", {"inplace": False}))
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.entry(x)
        return self.act(e + self.excitation(self.transition(self.dense(e))))


class DenseAttentionEncoder(nn.ModuleList):
    """The encoder as a list of DenseAttentionBlocks (same interface as the base encoder list).

    Args:
        in_channels: image channels.
        channels: output channels per scale, finest first.
        layers: dense layers per block.
        norm: MONAI norm name.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], layers: int = 2, norm: str = "instance"):
        blocks = []
        prev = in_channels
        for level, ch in enumerate(channels):
            blocks.append(DenseAttentionBlock(prev, int(ch), stride=1 if level == 0 else 2, layers=layers,
                                              norm=norm))
            prev = int(ch)
        super().__init__(blocks)
