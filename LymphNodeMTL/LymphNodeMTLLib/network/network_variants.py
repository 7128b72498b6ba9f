"""Networks assembled from the five papers' components, named in the model config's "network" dict.

A network dict that names no component (or names each at its default) builds the base
MultiTaskNodeNet exactly as before, so existing model folders load unchanged. Otherwise
ComponentNodeNet is built: the same DynUNet-block encoder/decoder and M2ANet head, with the named
components switched in (docs/methods.md; docs/ablation.md lists the keys):

    tasks                    ["segmentation", "classification"] (default); one of them alone gives
                             the single-task baselines
    encoder                  "resunet" (default) | "dense_attention" (SD-MdaNet)
    fusion                   null | "ma_mtln" (multi-scale fusion, visual + adaptive spatial attention)
    deep_supervision         false | true (MA-MTLN auxiliary mask heads)
    task_aware_attention     false | true (MA-MTLN top-down skip gates + bottom-up classification path)
    task_specific_attention  false | true (SD-MdaNet per-task attention)
    routing_gate             null | {"shared_experts": 2, "task_experts": 1} (MT-IDS)
    aux_short_axis           false | true (MT-IDS auxiliary short-axis regression)
    stations                 0 | number of station classes (MT-IDS auxiliary station task)
    head                     "soft_mask_pooling" (default, M2ANet) | "lesion_attention" (LA-Net)
    mixed_head               false | true (SD-MdaNet classification + regression head)
    pool_region              "seed_ball" | "patch": where a network without a mask branch pools
    seed_ball_radius_mm      radius of that seed ball

Training-only components (segmentation loss, gradient balancer, distillation, pseudo-masks) are in
the training config; `build_loss` turns them into the loss module.
"""

from __future__ import annotations

import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock, UnetUpBlock
from torch import nn

from .components.auxiliary_heads import ShortAxisHead, StationHead
from .components.deep_supervision import DEEP_SUPERVISION_WEIGHTS, DeepSupervisionHeads
from .components.dense_attention import DenseAttentionEncoder
from .components.lesion_attention_head import LesionAttentionHead
from .components.mixed_head import MixedHead
from .components.multiscale_fusion import MultiScaleFusion
from .components.routing_gate import RoutingGate
from .components.task_aware_attention import ClassificationAwarePath, SegmentationAwareDecoder
from .components.task_specific_attention import TaskSpecificAttention
from .node_descriptors import NodeHeadInput
from .node_head import NodeHead
from .node_network import MultiTaskNodeNet

SEGMENTATION, CLASSIFICATION, SHORT_AXIS = "segmentation", "classification", "short_axis"

# component key -> its "not named" value
COMPONENT_DEFAULTS = {
    "tasks": (SEGMENTATION, CLASSIFICATION),
    "encoder": "resunet",
    "dense_layers": 2,
    "fusion": None,
    "deep_supervision": False,
    "task_aware_attention": False,
    "task_specific_attention": False,
    "routing_gate": None,
    "aux_short_axis": False,
    "stations": 0,
    "head": "soft_mask_pooling",
    "mixed_head": False,
    "lesion_map_scale": 1,
    "pool_region": "seed_ball",
    "seed_ball_radius_mm": 5.0,
}


def _is_default(key: str, value) -> bool:
    default = COMPONENT_DEFAULTS[key]
    if key == "tasks":
        return set(value) == set(default)
    if default in (None, False, 0) and not value:
        return True
    return value == default


def names_components(network: dict) -> bool:
    """True when the network dict switches on any component (a non-default value)."""
    return any(k in COMPONENT_DEFAULTS and not _is_default(k, v) for k, v in network.items())


def build_network(network: dict) -> nn.Module:
    """The base MultiTaskNodeNet when no component is named, else a ComponentNodeNet."""
    net = dict(network)
    if "channels" in net:
        net["channels"] = tuple(net["channels"])
    if names_components(net):
        return ComponentNodeNet(**net)
    return MultiTaskNodeNet(**{k: v for k, v in net.items() if k not in COMPONENT_DEFAULTS})


def _norm(norm: str):
    return (norm, {"affine": True}) if norm == "instance" else norm


class ComponentNodeNet(nn.Module):
    """Patch in, node-mask logits and metastasis logit out, with switchable components.

    Same call shape as MultiTaskNodeNet: forward(x, mask=None) -> {"mask_logits", "metastasis_logit",
    "pool_mask", ...}; extra outputs (auxiliary mask logits, lesion map, routing weights, short
    axis) are ignored by the engine. Arguments as MultiTaskNodeNet plus the component keys listed in
    this module's docstring.
    """

    component_net = True  # training_module: call forward with per-node teacher forcing

    def __init__(
        self,
        in_channels: int = 2,
        channels: tuple[int, ...] = (16, 32, 64, 128),
        head_hidden: int = 64,
        pool_sigma_mm: float = 3.0,
        patch_spacing_mm: float = 1.0,
        dropout: float = 0.1,
        norm: str = "instance",
        tasks=COMPONENT_DEFAULTS["tasks"],
        encoder: str = "resunet",
        dense_layers: int = 2,
        fusion=None,
        deep_supervision: bool = False,
        task_aware_attention: bool = False,
        task_specific_attention: bool = False,
        routing_gate=None,
        aux_short_axis: bool = False,
        stations: int = 0,
        head: str = "soft_mask_pooling",
        mixed_head: bool = False,
        lesion_map_scale: int = 1,
        pool_region: str = "seed_ball",
        seed_ball_radius_mm: float = 5.0,
        hu_window: tuple[float, float] = (-250.0, 350.0),
        head_refine_hidden: int = 0,
    ):
        super().__init__()
        self.channels = tuple(int(c) for c in channels)
        self.tasks = tuple(tasks)
        unknown = set(self.tasks) - {SEGMENTATION, CLASSIFICATION}
        if unknown or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {SEGMENTATION!r}, {CLASSIFICATION!r}")
        self.segments = SEGMENTATION in self.tasks
        self.classifies = CLASSIFICATION in self.tasks
        if pool_region not in ("seed_ball", "patch"):
            raise ValueError("pool_region must be 'seed_ball' or 'patch'")
        if head not in ("soft_mask_pooling", "lesion_attention"):
            raise ValueError("head must be 'soft_mask_pooling' or 'lesion_attention'")
        self.pool_region = pool_region
        self.seed_ball_radius_mm = float(seed_ball_radius_mm)
        self.patch_spacing_mm = float(patch_spacing_mm)
        norm_name = _norm(norm)
        ch = self.channels

        # shared trunk
        if encoder == "resunet":
            self.encoder = nn.ModuleList()
            prev = in_channels
            for level, c in enumerate(ch):
                self.encoder.append(UnetResBlock(3, prev, c, kernel_size=3, stride=1 if level == 0 else 2,
                                                 norm_name=norm_name))
                prev = c
        elif encoder == "dense_attention":
            self.encoder = DenseAttentionEncoder(in_channels, ch, layers=dense_layers, norm=norm)
        else:
            raise ValueError("encoder must be 'resunet' or 'dense_attention'")
        self.fusion = None
        if fusion:
            opts = dict(fusion) if isinstance(fusion, dict) else {}
            kind = opts.pop("type", "ma_mtln") if isinstance(fusion, dict) else fusion
            if kind not in ("ma_mtln", True):
                raise ValueError("fusion must be 'ma_mtln' (or a dict of its options)")
            self.fusion = MultiScaleFusion(ch, norm=norm, **opts)

        # branches the gate and attention serve
        self.branch_tasks = [t for t in (SEGMENTATION, CLASSIFICATION) if t in self.tasks]
        if aux_short_axis:
            self.branch_tasks.append(SHORT_AXIS)
        self.routing = None
        if routing_gate:
            opts = dict(routing_gate) if isinstance(routing_gate, dict) else {}
            self.routing = RoutingGate(ch[-1], self.branch_tasks, norm=norm, **opts)
        self.task_attention = None
        if task_specific_attention:
            self.task_attention = TaskSpecificAttention(ch, [t for t in self.branch_tasks if t != SHORT_AXIS])

        # mask branch
        if self.segments:
            self.decoder = nn.ModuleList(
                UnetUpBlock(3, ch[level], ch[level - 1], kernel_size=3, stride=1, upsample_kernel_size=2,
                            norm_name=norm_name)
                for level in range(len(ch) - 1, 0, -1)
            )
            self.mask_out = UnetOutBlock(3, ch[0], 1)
            self.skip_gates = SegmentationAwareDecoder(ch, norm) if task_aware_attention else None
            self.deep_supervision = None
            if deep_supervision:
                stage_channels = [ch[level - 1] for level in range(len(ch) - 1, 0, -1)]
                sources = [ch[-1]] + stage_channels[:-1]  # coarsest first, the final output excluded
                num_aux = min(len(DEEP_SUPERVISION_WEIGHTS) - 1, len(sources))
                self.num_aux = num_aux
                self.deep_supervision = DeepSupervisionHeads(sources[len(sources) - num_aux:])

        # metastasis branch
        self.head_input = NodeHeadInput(ch, pool_sigma_mm, patch_spacing_mm, hu_window)  # as in the base head
        pooled_width = self.head_input.width
        self.mixed = bool(mixed_head)
        self.head_kind = head
        if self.classifies:
            self.bottom_up = ClassificationAwarePath(ch, norm) if task_aware_attention else None
            if head == "lesion_attention":
                self.lesion_head = LesionAttentionHead(ch, head_hidden, dropout, lesion_map_scale, self.mixed)
            elif self.mixed:
                self.head = MixedHead(pooled_width, head_hidden, dropout)
            else:
                self.head = NodeHead(pooled_width, head_hidden, dropout,  # as in the base head
                                     refine_hidden=head_refine_hidden)
        self.short_axis_head = ShortAxisHead(pooled_width) if aux_short_axis else None
        self.station_head = StationHead(pooled_width, stations) if stations else None

    # --- pieces -------------------------------------------------------------------------------
    def shared_parameters(self):
        """Parameters every task's loss reaches (the gradient balancer works on these)."""
        params = list(self.encoder.parameters())
        if self.fusion is not None:
            params += list(self.fusion.parameters())
        if self.routing is not None:
            params += list(self.routing.shared_parameters())
        return params

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
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

    def region_mask(self, x: torch.Tensor) -> torch.Tensor:
        """Where a network without a mask branch pools: a ball around the seed (the patch centre)
        or the whole patch. (B, 1, D, H, W) float."""
        b, _, *size = x.shape
        if self.pool_region == "patch":
            return x.new_ones(b, 1, *size)
        axes = [(torch.arange(n, device=x.device, dtype=torch.float32) - (n - 1) / 2.0) * self.patch_spacing_mm
                for n in size]
        d2 = axes[0].view(-1, 1, 1) ** 2 + axes[1].view(1, -1, 1) ** 2 + axes[2].view(1, 1, -1) ** 2
        ball = (d2 <= self.seed_ball_radius_mm**2).to(x.dtype)
        return ball.expand(b, 1, *size)

    def _pooled(self, feats, mask, x, slice_mm=None) -> torch.Tensor:
        return self.head_input(feats, mask, x[:, :1], slice_mm)

    # --- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                use_mask: torch.Tensor | None = None, slice_mm: torch.Tensor | None = None) -> dict:
        """x: (B, C, D, H, W); mask: optional (B, 1, D, H, W) mask to pool under; use_mask: optional
        (B,) bool choosing, per node, the given mask (True) or the predicted one (teacher forcing);
        slice_mm: optional (B,) coarsest spacing of each patch's source CT (node_descriptors)."""
        feats = self.encode(x)
        out: dict = {}
        branch = {t: feats for t in self.branch_tasks}
        if self.routing is not None:
            routed, out["routing_weights"] = self.routing(feats[-1])
            branch = {t: feats[:-1] + [routed[t]] for t in self.branch_tasks}
        if self.task_attention is not None:
            for t in self.task_attention.tasks:
                branch[t] = self.task_attention(branch[t], t)

        if self.segments:
            stages = self.decode(branch[SEGMENTATION])
            mask_logits = self.mask_out(stages[-1])
            if self.deep_supervision is not None and self.training:
                sources = ([branch[SEGMENTATION][-1]] + stages[:-1])[-self.num_aux:]
                out["aux_mask_logits"] = self.deep_supervision(sources, mask_logits.shape[2:])
            predicted = MultiTaskNodeNet.fallback_mask(mask_logits.detach() > 0, x)
        else:
            predicted = self.region_mask(x)
            mask_logits = (predicted * 2.0 - 1.0) * 8.0  # the pooling region, as confident logits
        if mask is None:
            pool_mask = predicted
        elif use_mask is None:
            pool_mask = mask.to(predicted.dtype)
        else:
            pool_mask = torch.where(use_mask.view(-1, 1, 1, 1, 1), mask.to(predicted.dtype), predicted)

        if self.classifies:
            cls_feats = branch[CLASSIFICATION]
            if self.bottom_up is not None:
                cls_feats = self.bottom_up(cls_feats)
            if self.head_kind == "lesion_attention":
                given = None if mask is None else mask
                res = self.lesion_head(cls_feats, given, use_mask)
                logit, value = res["logit"], res["value"]
                out["lesion_map_logits"] = res["map_logits"]
            else:
                pooled = self._pooled(cls_feats, pool_mask, x, slice_mm)
                if self.mixed:
                    logit, value = self.head(pooled)
                else:
                    logit, value = self.head(pooled).squeeze(1), None
            if value is not None:
                out["metastasis_value"] = value
        else:
            logit = mask_logits.new_zeros(x.shape[0])
        if self.short_axis_head is not None:
            out["short_axis"] = self.short_axis_head(self._pooled(branch[SHORT_AXIS], pool_mask, x, slice_mm))
        if self.station_head is not None:
            source = branch[CLASSIFICATION] if self.classifies else feats
            out["station_logits"] = self.station_head(self._pooled(source, pool_mask, x, slice_mm))
        out.update(mask_logits=mask_logits, metastasis_logit=logit, pool_mask=pool_mask)
        return out


def shared_parameters(network: nn.Module):
    """The balancer's shared parameters: the encoder (and shared fusion/experts) of any network."""
    if hasattr(network, "shared_parameters"):
        return list(network.shared_parameters())
    return list(network.encoder.parameters())


def build_loss(network: nn.Module, loss: dict | None = None, pseudo_masks: dict | None = None,
               distillation=None, spacing_mm: float = 1.0):
    """The multi-task loss for `network` and the training config's loss options; None when nothing
    differs from the default MultiTaskLoss() (so default training is unchanged)."""
    from ..training.losses.multitask_loss import MultiTaskLoss
    from ..training.pseudo_masks import PseudoMaskConfig

    loss = dict(loss or {})
    component = getattr(network, "component_net", False)
    if not component and not loss and not pseudo_masks and distillation is None:
        return None
    opts = {}
    if component:
        opts.update(
            tasks=network.tasks,
            short_axis=network.short_axis_head is not None,
            stations=network.station_head is not None,
        )
    return MultiTaskLoss(
        seg_weight_ce=float(loss.pop("seg_weight_ce", 1.0)),
        segmentation=loss.pop("segmentation", "dice_ce"),
        mixed_lambda=float(loss.pop("mixed_lambda", 0.1)),
        deep_supervision_weights=tuple(loss.pop("deep_supervision_weights", DEEP_SUPERVISION_WEIGHTS)),
        lesion_map_weight=float(loss.pop("lesion_map_weight", 1.0)),
        pseudo_masks=PseudoMaskConfig.from_dict(pseudo_masks),
        distillation=distillation,
        spacing_mm=spacing_mm,
        unknown=loss,
        **opts,
    )
