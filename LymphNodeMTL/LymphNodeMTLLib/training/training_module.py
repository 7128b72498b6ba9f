"""Network + multi-task loss as one module, so DistributedDataParallel syncs both (the uncertainty
weights are learnable too) and one forward call computes the losses."""

from __future__ import annotations

import torch
from torch import nn

from ..network.node_network import MultiTaskNodeNet
from .losses.multitask_loss import MultiTaskLoss


class MultiTaskTrainingModule(nn.Module):
    """Args:
        network: the multi-task network being trained.
        teacher_forcing: share of nodes (with a true mask) whose metastasis head pools under the
            true mask instead of the predicted one.
    """

    def __init__(self, network: MultiTaskNodeNet, teacher_forcing: float = 0.5, loss: MultiTaskLoss | None = None):
        super().__init__()
        self.network = network
        self.loss = loss if loss is not None else MultiTaskLoss()
        self.teacher_forcing = float(teacher_forcing)

    def forward(self, x, mask, has_mask, label, has_label, amp_dtype=None, slice_mm=None, **extras) -> dict:
        """slice_mm: (B,) source CT slice thickness (node_descriptors); extras (component networks'
        losses): teacher_logits (T, B), station (B,)."""
        if getattr(self.network, "component_net", False):
            return self._component_forward(x, mask, has_mask, label, has_label, amp_dtype, slice_mm, extras)
        with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            feats = self.network.encode(x)
            mask_logits = self.network.decode(feats)
            predicted = self.network.fallback_mask(mask_logits.detach() > 0, x)
            if self.training:
                forced = (torch.rand(x.shape[0], device=x.device) < self.teacher_forcing) & has_mask
            else:
                forced = torch.zeros_like(has_mask)
            pool_mask = torch.where(forced.view(-1, 1, 1, 1, 1), mask, predicted)
            logit = self.network.classify(feats, pool_mask, x, slice_mm)
        out = {"mask_logits": mask_logits.float(), "metastasis_logit": logit.float()}  # losses in fp32
        losses = self.loss(out, mask, has_mask, torch.nan_to_num(label), has_label, **extras)
        losses["outputs"] = out
        return losses

    def _component_forward(self, x, mask, has_mask, label, has_label, amp_dtype, slice_mm, extras) -> dict:
        """The same step for a ComponentNodeNet (network_variants.py): one forward call with
        per-node teacher forcing; a network without a mask branch always pools where it would at
        inference (teacher forcing would show it masks it never sees there)."""
        with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            if self.training and self.network.segments:
                forced = (torch.rand(x.shape[0], device=x.device) < self.teacher_forcing) & has_mask
            else:
                forced = torch.zeros_like(has_mask)
            out = self.network(x, mask, use_mask=forced, slice_mm=slice_mm)
        out = _to_float(out)  # losses in fp32
        losses = self.loss(out, mask, has_mask, torch.nan_to_num(label), has_label, **extras)
        losses["outputs"] = out
        return losses


def _to_float(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _to_float(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float(v) for v in value)
    return value
