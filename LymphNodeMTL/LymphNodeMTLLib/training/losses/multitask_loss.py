"""The multi-task loss: segmentation (Dice + CE) and metastasis classification (BCE), balanced by
learnable uncertainty weights (MA-MTLN). Nodes without a mask train only the classification head,
nodes without a label only the mask head.

Optional components (all off in MultiTaskLoss()): MA-MTLN's Jaccard + focal segmentation loss and
deep supervision, the SD-MdaNet mixed head's regression term and multi-teacher distillation, the
MT-IDS auxiliary tasks (short axis, station), LA-Net's lesion-map loss and two-stage pseudo-masks.
`build_loss` makes the loss for a network and the training config's loss options. The loss reads
the network's NetworkOutput; the parts a network does not have are None there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from ...network.components.auxiliary_heads import short_axis_loss, station_loss
from ...network.components.deep_supervision import DEEP_SUPERVISION_WEIGHTS, deep_supervision_loss
from ...network.components.mixed_head import MixedLoss
from ...network.node_network import NetworkOutput
from ..pseudo_masks import PseudoMaskConfig, pseudo_mask_targets
from .segmentation_losses import build_segmentation_loss, weighted_mean
from .uncertainty_weighting import UncertaintyWeighting

TASKS = ("segmentation", "classification")


class MultiTaskLoss(nn.Module):
    """Args:
        seg_weight_ce: weight of the cross-entropy term inside DiceCE.
        segmentation: "dice_ce" (default) or "jaccard_focal" (MA-MTLN).
        tasks: the network's main tasks (a single-task network has one).
        short_axis: add the auxiliary short-axis regression task (NetworkOutput.short_axis).
        stations: add the auxiliary station task (NetworkOutput.station_logits).
        mixed_lambda: weight of the mixed head's regression term (used when the network outputs
            a metastasis_value).
        deep_supervision_weights: weights of auxiliary and final mask outputs (MA-MTLN 0.8/0.9/1.0).
        lesion_map_weight: weight of the LA-Net lesion-map BCE inside the mask task.
        pseudo_masks: LA-Net two-stage pseudo-mask settings, or None.
        distillation: a MultiTeacherDistillation, or None.
        unknown: leftover loss options; any is an error.
    """

    def __init__(self, seg_weight_ce: float = 1.0, segmentation: str = "dice_ce", tasks=TASKS,
                 short_axis: bool = False, stations: bool = False, mixed_lambda: float = 0.1,
                 deep_supervision_weights=DEEP_SUPERVISION_WEIGHTS, lesion_map_weight: float = 1.0,
                 pseudo_masks: PseudoMaskConfig | None = None, distillation: nn.Module | None = None,
                 unknown: dict | None = None):
        super().__init__()
        if unknown:
            raise ValueError(f"unknown loss options: {', '.join(sorted(unknown))}")
        if segmentation == "dice_ce":
            self.seg = DiceCELoss(sigmoid=True, batch=False, reduction="mean", lambda_ce=seg_weight_ce)
        else:
            self.seg = build_segmentation_loss(segmentation)
        self.segmentation = segmentation
        self.seg_weight_ce = float(seg_weight_ce)
        self.tasks = tuple(tasks)
        self.short_axis = bool(short_axis)
        self.stations = bool(stations)
        self.mixed = MixedLoss(mixed_lambda)
        self.deep_supervision_weights = tuple(float(w) for w in deep_supervision_weights)
        self.lesion_map_weight = float(lesion_map_weight)
        self.pseudo_masks = pseudo_masks
        self.distillation = distillation
        self.epoch = 0  # set by the trainer (two-stage pseudo-mask schedule)
        n = len(self.tasks) + int(self.short_axis) + int(self.stations)
        self.balance = UncertaintyWeighting(n)

    def _per_sample_seg(self):
        if not hasattr(self, "_per_sample"):
            object.__setattr__(self, "_per_sample", build_segmentation_loss(self.segmentation, self.seg_weight_ce))
        return self._per_sample.per_sample

    def _segmentation(self, out: NetworkOutput, mask, has_mask, zero, pseudo: bool) -> torch.Tensor:
        aux = out.deep_supervision
        logits = out.mask_logits
        if pseudo and not bool(has_mask.all()):
            targets, weights = pseudo_mask_targets(logits, mask, has_mask, self.pseudo_masks.threshold,
                                                   self.pseudo_masks.weight)
            if not bool((weights > 0).any()):
                return zero
            per_sample = self._per_sample_seg()

            def fn(lg, tg):
                return weighted_mean(per_sample(lg, tg), weights)

            if aux:
                return deep_supervision_loss(fn, aux, logits, targets, self.deep_supervision_weights)
            return fn(logits, targets)
        if not bool(has_mask.any()):
            return zero
        idx = has_mask.nonzero().flatten()
        if aux:
            return deep_supervision_loss(self.seg, [a[idx] for a in aux], logits[idx], mask[idx],
                                         self.deep_supervision_weights)
        return self.seg(logits[idx], mask[idx])

    def _lesion_map(self, map_logits, mask, has_mask, zero, pseudo: bool) -> torch.Tensor:
        """LA-Net map loss: BCE to the mask downsampled to the map's grid (pseudo-masks in stage 2)."""
        target = F.adaptive_avg_pool3d(mask.float(), map_logits.shape[2:])
        weights = has_mask.float()
        if pseudo:
            target, weights = pseudo_mask_targets(map_logits, target, has_mask, self.pseudo_masks.threshold,
                                                  self.pseudo_masks.weight)
        if not bool((weights > 0).any()):
            return zero
        per_sample = F.binary_cross_entropy_with_logits(map_logits.float(), target, reduction="none").flatten(1).mean(1)
        return weighted_mean(per_sample, weights)

    def forward(self, out: NetworkOutput, mask: torch.Tensor, has_mask: torch.Tensor,
                label: torch.Tensor, has_label: torch.Tensor, spacing_mm: torch.Tensor,
                teacher_logits: torch.Tensor | None = None, station: torch.Tensor | None = None) -> dict:
        """mask (B,1,D,H,W) float; has_mask (B,) bool; label (B,) float; has_label (B,) bool;
        spacing_mm (B,) patch voxel size (short-axis targets); teacher_logits (T, B) for
        distillation; station (B,) long, -1 unknown."""
        zero = out.metastasis_logit.sum() * 0.0
        # the schedule shapes training only; validation losses always cover every task
        stage1 = self.training and self.pseudo_masks is not None and self.pseudo_masks.in_stage1(self.epoch)
        pseudo = self.training and self.pseudo_masks is not None and not stage1
        losses, result = [], {}
        seg = zero
        if "segmentation" in self.tasks:
            seg = self._segmentation(out, mask, has_mask, zero, pseudo)
            if out.lesion_map is not None:
                seg = seg + self.lesion_map_weight * self._lesion_map(out.lesion_map, mask, has_mask, zero, pseudo)
            losses.append(seg)
        cls = zero
        if "classification" in self.tasks:
            train_head = not stage1 or self.pseudo_masks.classify_in_stage1
            if not train_head:
                cls = zero
            elif out.metastasis_value is not None:
                cls = self.mixed(out.metastasis_logit, out.metastasis_value, label, has_label, mask, has_mask,
                                 spacing_mm)
            elif bool(has_label.any()):
                idx = has_label.nonzero().flatten()
                cls = F.binary_cross_entropy_with_logits(out.metastasis_logit[idx], label[idx])
            if out.lesion_map is not None and "segmentation" not in self.tasks:
                cls = cls + self.lesion_map_weight * self._lesion_map(out.lesion_map, mask, has_mask, zero, pseudo)
            losses.append(cls)
        if self.short_axis:
            sa = short_axis_loss(out.short_axis, mask, has_mask, spacing_mm)
            result["short_axis"] = sa.detach()
            losses.append(sa)
        if self.stations:
            st = station_loss(out.station_logits, station)
            result["station"] = st.detach()
            losses.append(st)
        total = self.balance(losses)
        terms = self.balance.terms(losses)
        if self.distillation is not None and teacher_logits is not None and self.training:
            distill = self.distillation(out.metastasis_logit, teacher_logits)
            total = total + distill
            k = self.tasks.index("classification") if "classification" in self.tasks else 0
            terms[k] = terms[k] + distill
            result["distill"] = distill.detach()
        result.update(total=total, seg=seg.detach(), cls=cls.detach(), terms=terms)
        return result


def build_loss(network, loss: dict | None = None, pseudo_masks: dict | None = None,
               distillation: nn.Module | None = None) -> MultiTaskLoss | None:
    """The multi-task loss for `network` (a MultiTaskNodeNet: its tasks and auxiliary heads) and the
    training config's loss options; None when nothing differs from the default MultiTaskLoss() (so
    default training is unchanged)."""
    loss = dict(loss or {})
    config = network.config
    if not config.named_components() and not loss and not pseudo_masks and distillation is None:
        return None
    return MultiTaskLoss(
        seg_weight_ce=float(loss.pop("seg_weight_ce", 1.0)),
        segmentation=loss.pop("segmentation", "dice_ce"),
        tasks=config.tasks,
        short_axis=config.aux_short_axis,
        stations=bool(config.stations),
        mixed_lambda=float(loss.pop("mixed_lambda", 0.1)),
        deep_supervision_weights=tuple(loss.pop("deep_supervision_weights", DEEP_SUPERVISION_WEIGHTS)),
        lesion_map_weight=float(loss.pop("lesion_map_weight", 1.0)),
        pseudo_masks=PseudoMaskConfig.from_dict(pseudo_masks),
        distillation=distillation,
        unknown=loss,
    )
