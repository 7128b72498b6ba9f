"""SD-MdaNet task-specific attention (docs/methods.md, section 3; our reading).

Each task (the mask decoder, the metastasis head) looks at the shared multi-scale features through
its own attention: per scale a squeeze-excitation channel gate (MONAI ChannelSELayer) followed by a
spatial gate sigmoid(conv(.)), applied residually, f' = f + s(c(f)) * c(f), so an untrained gate
starts close to the shared features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import ChannelSELayer, Convolution
from torch import nn


class ScaleAttention(nn.Module):
    """Channel (SE) then spatial gating of one feature map, residual.

    Args:
        channels: feature channels.
        reduction: SE reduction ratio (clipped so at least one hidden unit remains).
    """

    def __init__(self, channels: int, reduction: int = 2):
        super().__init__()
        r = max(1, min(int(reduction), channels))
        self.channel = ChannelSELayer(3, channels, r=r, acti_type_1=("relu", {"inplace": False}))
        self.spatial = Convolution(3, channels, 1, kernel_size=3, conv_only=True)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        c = self.channel(f)
        return f + torch.sigmoid(self.spatial(c)) * c


class TaskSpecificAttention(nn.Module):
    """One ScaleAttention per task and scale.

    Args:
        channels: feature channels per scale, finest first.
        tasks: task names ("segmentation", "classification", ...).
    """

    def __init__(self, channels: Sequence[int], tasks: Sequence[str]):
        super().__init__()
        self.tasks = tuple(tasks)
        self.attention = nn.ModuleDict(
            {t: nn.ModuleList(ScaleAttention(int(c)) for c in channels) for t in self.tasks}
        )

    def forward(self, feats: Sequence[torch.Tensor], task: str) -> list[torch.Tensor]:
        return [att(f) for att, f in zip(self.attention[task], feats)]
