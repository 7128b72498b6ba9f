"""Name registries of the network's switchable parts (MONAI-style: a name in the config picks a block).

Each slot maps the name a model config uses to a factory that builds the block from the
NetworkConfig (network_config.py), which checks every name against these dicts. A new block is one
file in components/ and one entry here. docs/ablation.md lists the names with their papers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from monai.networks.blocks.dynunet_block import UnetResBlock
from torch import nn

from .components.dense_attention import DenseAttentionEncoder
from .components.lesion_attention_head import LesionAttentionHead
from .components.mixed_head import MixedHead
from .components.multiscale_fusion import MultiScaleFusion
from .node_head import NodeHead
from .norm_layer import monai_norm

if TYPE_CHECKING:
    from .network_config import NetworkConfig

SEGMENTATION, CLASSIFICATION, SHORT_AXIS = "segmentation", "classification", "short_axis"
TASKS = (SEGMENTATION, CLASSIFICATION)


# --- encoder: (config) -> a ModuleList of one block per scale, finest first -------------------------
def residual_encoder(config: NetworkConfig) -> nn.ModuleList:
    """The base encoder: one DynUNet residual block per scale, each after the first halving the grid."""
    blocks, prev = nn.ModuleList(), config.in_channels
    for level, ch in enumerate(config.channels):
        blocks.append(UnetResBlock(3, prev, ch, kernel_size=3, stride=1 if level == 0 else 2,
                                   norm_name=monai_norm(config.norm)))
        prev = ch
    return blocks


def dense_attention_encoder(config: NetworkConfig) -> nn.ModuleList:
    """SD-MdaNet's dense blocks with squeeze-excitation (dense_attention.py)."""
    return DenseAttentionEncoder(config.in_channels, config.channels, layers=config.dense_layers, norm=config.norm)


ENCODERS = {"resunet": residual_encoder, "dense_attention": dense_attention_encoder}


# --- fusion of the encoder scales: (config) -> module, features in and out at unchanged shapes ------
def ma_mtln_fusion(config: NetworkConfig) -> nn.Module:
    fusion = config.fusion
    return MultiScaleFusion(config.channels, fused_channels=fusion.fused_channels, fusion_scale=fusion.fusion_scale,
                            dilations=fusion.dilations, norm=config.norm)


FUSIONS = {"ma_mtln": ma_mtln_fusion}


# --- metastasis head: (config, head input width) -> module ------------------------------------------
def soft_mask_pooling_head(config: NetworkConfig, width: int) -> nn.Module:
    """M2ANet: the MLP + descriptor head over features pooled under the soft mask (node_head.py), or
    SD-MdaNet's two-output mixed head over the same input."""
    if config.mixed_head:
        return MixedHead(width, config.head_hidden, config.dropout)
    return NodeHead(width, config.head_hidden, config.dropout, refine_hidden=config.head_refine_hidden)


def lesion_attention_head(config: NetworkConfig, width: int) -> nn.Module:
    """LA-Net: CBAM per scale, a lesion map, features gated by it (lesion_attention_head.py)."""
    return LesionAttentionHead(config.channels, config.head_hidden, config.dropout, config.lesion_map_scale,
                               config.mixed_head)


HEADS = {"soft_mask_pooling": soft_mask_pooling_head, "lesion_attention": lesion_attention_head}


# --- where a network without a mask branch pools: (x, spacing_mm (B,), radius_mm) -> (B, 1, D, H, W) --
def seed_ball_region(x: torch.Tensor, spacing_mm: torch.Tensor, radius_mm: float) -> torch.Tensor:
    """A ball of radius_mm around the patch centre, where the seed is, on each patch's own spacing."""
    b, _, *size = x.shape
    axes = [torch.arange(n, device=x.device, dtype=torch.float32) - (n - 1) / 2.0 for n in size]
    d2_vox = axes[0].view(-1, 1, 1) ** 2 + axes[1].view(1, -1, 1) ** 2 + axes[2].view(1, 1, -1) ** 2
    d2 = d2_vox.unsqueeze(0) * spacing_mm.to(x.device, torch.float32).view(-1, 1, 1, 1) ** 2
    return (d2 <= radius_mm**2).to(x.dtype).unsqueeze(1)


def whole_patch_region(x: torch.Tensor, spacing_mm: torch.Tensor, radius_mm: float) -> torch.Tensor:
    """The whole patch."""
    b, _, *size = x.shape
    return x.new_ones(b, 1, *size)


POOL_REGIONS = {"seed_ball": seed_ball_region, "patch": whole_patch_region}
