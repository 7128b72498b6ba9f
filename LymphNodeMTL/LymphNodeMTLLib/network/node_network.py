"""The multi-task network: shared 3-D encoder, node-mask decoder and metastasis head.

One class, assembled from a NetworkConfig (network_config.py): the base network (MONAI DynUNet
blocks, the M2ANet soft-mask pooling head with node descriptors) and, switched in by name from the
registries of component_registry.py, the five papers' components (docs/methods.md; docs/ablation.md
lists the keys). With every component at its default the blocks, weights and outputs are those of
the base network the bundled model was trained as.

The metastasis head pools under, in order of preference: the mask passed in (ground truth while
training, a radiologist's corrected mask when re-classifying), else the network's own thresholded
prediction (or, without a mask branch, a region around the seed). The network returns a
NetworkOutput; parts a configuration does not have are None.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetUpBlock
from torch import nn

from .component_registry import (
    CLASSIFICATION,
    ENCODERS,
    FUSIONS,
    HEADS,
    POOL_REGIONS,
    SEGMENTATION,
    SHORT_AXIS,
)
from .components.auxiliary_heads import ShortAxisHead, StationHead
from .components.deep_supervision import DEEP_SUPERVISION_WEIGHTS, DeepSupervisionHeads
from .components.routing_gate import RoutingGate
from .components.task_aware_attention import ClassificationAwarePath, SegmentationAwareDecoder
from .components.task_specific_attention import TaskSpecificAttention
from .batch_spacing import spacing_of_batch
from .network_config import NetworkConfig
from .node_descriptors import NodeHeadInput
from .norm_layer import monai_norm


@dataclass
class NetworkOutput:
    """What the network computes for a batch of B patches.

    Attributes:
        mask_logits: (B, 1, D, H, W) node-mask logits (a network without a mask branch: its pooling
            region as confident logits).
        metastasis_logit: (B,) (a network without a metastasis head: zeros).
        pool_mask: (B, 1, D, H, W) the mask the head pooled under.
        deep_supervision: auxiliary mask logits on the patch grid, coarsest first (training only).
        lesion_map: (B, 1, d, h, w) LA-Net lesion-map logits.
        metastasis_value: (B,) the mixed head's regressed value (short axis / 10 mm).
        short_axis: (B,) auxiliary short-axis regression (units of 10 mm).
        station_logits: (B, stations) auxiliary station classification.
        routing_weights: the routing gate's weights per task.
    """

    mask_logits: torch.Tensor
    metastasis_logit: torch.Tensor
    pool_mask: torch.Tensor | None = None
    deep_supervision: list[torch.Tensor] | None = None
    lesion_map: torch.Tensor | None = None
    metastasis_value: torch.Tensor | None = None
    short_axis: torch.Tensor | None = None
    station_logits: torch.Tensor | None = None
    routing_weights: dict | None = None

    def float(self) -> "NetworkOutput":
        """A copy with every floating tensor in fp32 (the losses run in fp32 under autocast)."""
        return replace(self, **{f.name: _to_float(getattr(self, f.name)) for f in fields(self)})


def _to_float(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _to_float(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float(v) for v in value)
    return value


class MultiTaskNodeNet(nn.Module):
    """Patch in, NetworkOutput (node-mask logits, metastasis logit, ...) out.

    Args:
        config: the architecture; NetworkConfig() is the base network at its default size.
    """

    def __init__(self, config: NetworkConfig | None = None):
        super().__init__()
        config = config if config is not None else NetworkConfig()
        self.config = config
        ch = self.channels = config.channels
        self.tasks = config.tasks
        self.segments, self.classifies = config.segments, config.classifies
        norm_name = monai_norm(config.norm)

        # shared trunk (the attribute order is the order of the saved weights)
        self.encoder = ENCODERS[config.encoder](config)
        self.fusion = FUSIONS[config.fusion.type](config) if config.fusion is not None else None

        # the branches the routing gate and task-specific attention serve
        self.branch_tasks = [t for t in (SEGMENTATION, CLASSIFICATION) if t in self.tasks]
        if config.aux_short_axis:
            self.branch_tasks.append(SHORT_AXIS)
        self.routing = None
        if config.routing_gate is not None:
            gate = config.routing_gate
            self.routing = RoutingGate(ch[-1], self.branch_tasks, shared_experts=gate.shared_experts,
                                       task_experts=gate.task_experts, expert_kernel=gate.expert_kernel,
                                       norm=config.norm)
        self.task_attention = None
        if config.task_specific_attention:
            self.task_attention = TaskSpecificAttention(ch, [t for t in self.branch_tasks if t != SHORT_AXIS])

        # mask branch
        if self.segments:
            self.decoder = nn.ModuleList(
                UnetUpBlock(3, ch[level], ch[level - 1], kernel_size=3, stride=1, upsample_kernel_size=2,
                            norm_name=norm_name)
                for level in range(len(ch) - 1, 0, -1)
            )
            self.mask_out = UnetOutBlock(3, ch[0], 1)
            self.skip_gates = SegmentationAwareDecoder(ch, config.norm) if config.task_aware_attention else None
            self.deep_supervision = None
            if config.deep_supervision:
                stage_channels = [ch[level - 1] for level in range(len(ch) - 1, 0, -1)]
                sources = [ch[-1]] + stage_channels[:-1]  # coarsest first, the final output excluded
                self.num_aux = min(len(DEEP_SUPERVISION_WEIGHTS) - 1, len(sources))
                self.deep_supervision = DeepSupervisionHeads(sources[len(sources) - self.num_aux:])

        # metastasis branch
        self.head_input = NodeHeadInput(ch, config.pool_sigma_mm, config.hu_window)
        width = self.head_input.width
        if self.classifies:
            self.bottom_up = ClassificationAwarePath(ch, config.norm) if config.task_aware_attention else None
            head = HEADS[config.head](config, width)
            if config.head == "lesion_attention":
                self.lesion_head = head  # reads the features itself, not the pooled head input
            else:
                self.head = head
        self.short_axis_head = ShortAxisHead(width) if config.aux_short_axis else None
        self.station_head = StationHead(width, config.stations) if config.stations else None

    # --- pieces -------------------------------------------------------------------------------
    def shared_parameters(self) -> list:
        """Parameters every task's loss reaches (the gradient balancer works on these)."""
        params = list(self.encoder.parameters())
        if self.fusion is not None:
            params += list(self.fusion.parameters())
        if self.routing is not None:
            params += list(self.routing.shared_parameters())
        return params

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features per scale, finest first."""
        feats = []
        for block in self.encoder:
            x = block(x)
            feats.append(x)
        if self.fusion is not None:
            feats = self.fusion(feats)
        return feats

    def decode(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every decoder stage's output, coarsest first."""
        if self.skip_gates is not None:
            return self.skip_gates(self.decoder, feats)
        x, outputs = feats[-1], []
        for up, skip in zip(self.decoder, reversed(feats[:-1])):
            x = up(x, skip)
            outputs.append(x)
        return outputs

    def region_mask(self, x: torch.Tensor, spacing_mm: torch.Tensor) -> torch.Tensor:
        """Where a network without a mask branch pools (config.pool_region). (B, 1, D, H, W) float."""
        return POOL_REGIONS[self.config.pool_region](x, spacing_mm, self.config.seed_ball_radius_mm)

    @staticmethod
    def fallback_mask(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Where the predicted mask is empty, pool around the seed (guidance channel > 0.5)."""
        empty = mask.flatten(1).sum(1) == 0
        if bool(empty.any()) and x.shape[1] > 1:
            seed_ball = x[:, -1:] > 0.5
            mask = torch.where(empty.view(-1, 1, 1, 1, 1), seed_ball, mask)
        return mask.float()

    def _pooled(self, feats, mask, x, spacing_mm, slice_mm) -> torch.Tensor:
        """The head input: features pooled under `mask` and the node descriptors (x: channel 0 = CT)."""
        return self.head_input(feats, mask, x[:, :1], spacing_mm, slice_mm)

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) node-mask logits alone: forward's mask branch without the heads (a
        simulated click needs only the mask)."""
        if not self.segments:
            raise ValueError("this network has no mask branch")
        return self.mask_out(self.decode(self._branches(self.encode(x))[SEGMENTATION])[-1])

    def _branches(self, feats: list[torch.Tensor], parts: dict | None = None) -> dict:
        """Each task's features: the shared ones, routed and task-attended where the config says."""
        branch = {t: feats for t in self.branch_tasks}
        if self.routing is not None:
            routed, weights = self.routing(feats[-1])
            if parts is not None:
                parts["routing_weights"] = weights
            branch = {t: feats[:-1] + [routed[t]] for t in self.branch_tasks}
        if self.task_attention is not None:
            for t in self.task_attention.tasks:
                branch[t] = self.task_attention(branch[t], t)
        return branch

    def _classification_branch(self, branch: dict) -> list[torch.Tensor]:
        cls_feats = branch[CLASSIFICATION]
        return self.bottom_up(cls_feats) if self.bottom_up is not None else cls_feats

    def _metastasis(self, cls_feats, mask, use_mask, pool_mask, x, spacing_mm, slice_mm, parts: dict):
        """(metastasis logit (B,), value or None) of the features pooled under `pool_mask`."""
        if self.config.head == "lesion_attention":
            res = self.lesion_head(cls_feats, mask, use_mask)
            parts["lesion_map"] = res["map_logits"]
            return res["logit"], res["value"]
        if self.config.mixed_head:
            return self.head(self._pooled(cls_feats, pool_mask, x, spacing_mm, slice_mm))
        return self.head(self._pooled(cls_feats, pool_mask, x, spacing_mm, slice_mm)).squeeze(1), None

    def classification_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The features the metastasis head pools, per scale. They depend on the input alone, so a
        node re-classified under one mask after another (a click after a click) reuses them."""
        if not self.classifies:
            raise ValueError("this network has no metastasis head")
        return self._classification_branch(self._branches(self.encode(x)))

    def classify_under(self, cls_feats: list[torch.Tensor], mask: torch.Tensor, x: torch.Tensor,
                       slice_mm: torch.Tensor | None = None,
                       spacing_mm: torch.Tensor | float | None = None) -> torch.Tensor:
        """(B,) metastasis logits under the given (B, 1, D, H, W) masks, from classification_features
        of `x`: what forward(x, mask) gives, without the mask branch."""
        spacing_mm = spacing_of_batch(spacing_mm, x.shape[0], self.config.patch_spacing_mm, x.device)
        logit, _ = self._metastasis(cls_feats, mask, None, mask.float(), x, spacing_mm,
                                    slice_mm, {})
        return logit

    # --- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                use_mask: torch.Tensor | None = None, slice_mm: torch.Tensor | None = None,
                spacing_mm: torch.Tensor | float | None = None) -> NetworkOutput:
        """x: (B, C, D, H, W); mask: optional (B, 1, D, H, W) mask to pool under; use_mask: optional
        (B,) bool choosing, per node, the given mask (True) or the predicted one (teacher forcing);
        slice_mm: optional (B,) coarsest spacing of each patch's source CT (None: as fine as the
        patch; node_descriptors); spacing_mm: (B,) each patch's voxel size, or one number for the
        batch (None: the spacing the network is built at, config.patch_spacing_mm)."""
        spacing_mm = spacing_of_batch(spacing_mm, x.shape[0], self.config.patch_spacing_mm, x.device)
        feats = self.encode(x)
        parts: dict = {}
        branch = self._branches(feats, parts)

        if self.segments:
            stages = self.decode(branch[SEGMENTATION])
            mask_logits = self.mask_out(stages[-1])
            if self.deep_supervision is not None and self.training:
                sources = ([branch[SEGMENTATION][-1]] + stages[:-1])[-self.num_aux:]
                parts["deep_supervision"] = self.deep_supervision(sources, mask_logits.shape[2:])
            predicted = self.fallback_mask(mask_logits.detach() > 0, x)
        else:
            predicted = self.region_mask(x, spacing_mm)
            mask_logits = (predicted * 2.0 - 1.0) * 8.0  # the pooling region, as confident logits
        if mask is None:
            pool_mask = predicted
        elif use_mask is None:
            pool_mask = mask.to(predicted.dtype)
        else:
            pool_mask = torch.where(use_mask.view(-1, 1, 1, 1, 1), mask.to(predicted.dtype), predicted)

        if self.classifies:
            cls_feats = self._classification_branch(branch)
            logit, parts["metastasis_value"] = self._metastasis(cls_feats, mask, use_mask, pool_mask, x,
                                                                spacing_mm, slice_mm, parts)
        else:
            logit = mask_logits.new_zeros(x.shape[0])
        if self.short_axis_head is not None:
            parts["short_axis"] = self.short_axis_head(self._pooled(branch[SHORT_AXIS], pool_mask, x, spacing_mm, slice_mm))
        if self.station_head is not None:
            source = branch[CLASSIFICATION] if self.classifies else feats
            parts["station_logits"] = self.station_head(self._pooled(source, pool_mask, x, spacing_mm, slice_mm))
        return NetworkOutput(mask_logits=mask_logits, metastasis_logit=logit, pool_mask=pool_mask, **parts)
