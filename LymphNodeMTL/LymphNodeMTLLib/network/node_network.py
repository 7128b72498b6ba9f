"""The multi-task network: shared 3-D encoder, node-mask decoder and metastasis head.

Built from MONAI's DynUNet blocks. The metastasis head pools encoder features under the softly
expanded mask (M2ANet, see soft_mask_pooling.py). The mask it pools under is, in order of
preference: the one passed in (ground truth while training, a radiologist's corrected mask when
re-classifying), else the network's own thresholded prediction.
"""

from __future__ import annotations

import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock, UnetUpBlock
from torch import nn

from .node_descriptors import NodeHeadInput
from .node_head import NodeHead


class MultiTaskNodeNet(nn.Module):
    """Patch in, node-mask logits and metastasis logit out.

    Args:
        in_channels: image channels (windowed CT + seed guidance = 2).
        channels: feature channels per encoder scale; each scale after the first halves the grid.
        head_hidden: width of the metastasis MLP.
        pool_sigma_mm: context margin of the soft mask pooling.
        patch_spacing_mm: patch voxel size, so the margin is in mm.
        dropout: dropout before the head's last layer.
        norm: MONAI norm name (instance norm keeps batched and one-by-one inference identical).
        hu_window: the preprocessing HU window (the head's descriptors are in HU).
        head_refine_hidden: width of the head's refine MLP, set by a soft-label refit (0: none).
    """

    def __init__(
        self,
        in_channels: int = 2,
        channels: tuple[int, ...] = (16, 32, 64, 128),
        head_hidden: int = 64,
        pool_sigma_mm: float = 3.0,
        patch_spacing_mm: float = 1.0,
        dropout: float = 0.1,
        norm: str = "instance",
        hu_window: tuple[float, float] = (-250.0, 350.0),
        head_refine_hidden: int = 0,
    ):
        super().__init__()
        self.channels = tuple(int(c) for c in channels)
        norm_name = (norm, {"affine": True}) if norm == "instance" else norm
        self.encoder = nn.ModuleList()
        prev = in_channels
        for level, ch in enumerate(self.channels):
            stride = 1 if level == 0 else 2
            self.encoder.append(
                UnetResBlock(3, prev, ch, kernel_size=3, stride=stride, norm_name=norm_name)
            )
            prev = ch
        self.decoder = nn.ModuleList(
            UnetUpBlock(
                3,
                self.channels[level],
                self.channels[level - 1],
                kernel_size=3,
                stride=1,
                upsample_kernel_size=2,
                norm_name=norm_name,
            )
            for level in range(len(self.channels) - 1, 0, -1)
        )
        self.mask_out = UnetOutBlock(3, self.channels[0], 1)
        self.head_input = NodeHeadInput(self.channels, pool_sigma_mm, patch_spacing_mm, hu_window)
        self.head = NodeHead(self.head_input.width, head_hidden, dropout, refine_hidden=head_refine_hidden)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for block in self.encoder:
            x = block(x)
            feats.append(x)
        return feats

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for up, skip in zip(self.decoder, reversed(feats[:-1])):
            x = up(x, skip)
        return self.mask_out(x)

    def classify(self, feats: list[torch.Tensor], mask: torch.Tensor, x: torch.Tensor,
                 slice_mm: torch.Tensor | None = None) -> torch.Tensor:
        """Metastasis logit (B,) from encoder features pooled under `mask` (B, 1, D, H, W) and the
        node's shape and CT statistics under it (x: the network input, channel 0 = CT; slice_mm:
        (B,) the source CT's coarsest spacing, node_descriptors)."""
        return self.head(self.head_input(feats, mask, x[:, :1], slice_mm)).squeeze(1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                slice_mm: torch.Tensor | None = None) -> dict:
        """x: (B, C, D, H, W). mask: optional (B, 1, D, H, W) mask to pool under. slice_mm:
        optional (B,) coarsest spacing of each patch's source CT (None: as fine as the patch).

        Returns {"mask_logits": (B, 1, D, H, W), "metastasis_logit": (B,), "pool_mask": used mask}.
        """
        feats = self.encode(x)
        mask_logits = self.decode(feats)
        if mask is None:
            mask = self.fallback_mask(mask_logits.detach() > 0, x)
        return {
            "mask_logits": mask_logits,
            "metastasis_logit": self.classify(feats, mask, x, slice_mm),
            "pool_mask": mask,
        }

    @staticmethod
    def fallback_mask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Where the predicted mask is empty, pool around the seed (guidance channel > 0.5)."""
        empty = mask.flatten(1).sum(1) == 0
        if bool(empty.any()) and x.shape[1] > 1:
            seed_ball = x[:, -1:] > 0.5
            mask = torch.where(empty.view(-1, 1, 1, 1, 1), seed_ball, mask)
        return mask.float()
