"""Network + multi-task loss as one module, so DistributedDataParallel syncs both (the uncertainty
weights are learnable too) and one forward call computes the losses."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..network.node_network import MultiTaskNodeNet, NetworkOutput
from ..network.patch_spacing import patch_spacing, spacing_groups
from .losses.multitask_loss import MultiTaskLoss


class MultiTaskTrainingModule(nn.Module):
    """Args:
        network: the multi-task network being trained.
        teacher_forcing: share of nodes (with a true mask) whose metastasis head pools under the
            true mask instead of the predicted one.
        loss: the multi-task loss (default MultiTaskLoss()).
    """

    def __init__(self, network: MultiTaskNodeNet, teacher_forcing: float = 0.5, loss: MultiTaskLoss | None = None):
        super().__init__()
        self.network = network
        self.loss = loss if loss is not None else MultiTaskLoss()
        self.teacher_forcing = float(teacher_forcing)

    def forward(self, x, mask, has_mask, label, has_label, amp_dtype=None, slice_mm=None,
                patch_spacing_mm=None, **extras) -> dict:
        """One forward call with per-node teacher forcing, then the losses (and "outputs": the
        NetworkOutput in fp32). slice_mm: (B,) source CT slice thickness (node_descriptors);
        patch_spacing_mm: (B,) each patch's voxel size, None = the network's own; extras (the
        optional components' losses): teacher_logits (T, B), station (B,).

        Patches of several spacings are run as one group per spacing, each with the network and
        the losses told its spacing (patch_spacing.py), as inference runs each zoom level; the
        group losses are combined weighted by group size, and the outputs put back in batch order."""
        if patch_spacing_mm is None:
            return self._group(x, mask, has_mask, label, has_label, amp_dtype, slice_mm, extras)
        groups = spacing_groups(patch_spacing_mm)
        if len(groups) == 1:
            with patch_spacing(self, groups[0][0]):
                return self._group(x, mask, has_mask, label, has_label, amp_dtype, slice_mm, extras)
        parts, order = [], []
        for spacing, idx in groups:
            idx = idx.to(x.device)
            with patch_spacing(self, spacing):
                parts.append(self._group(x[idx], mask[idx], has_mask[idx], label[idx], has_label[idx], amp_dtype,
                                         None if slice_mm is None else slice_mm[idx], _extras_of(extras, idx)))
            order.append(idx)
        return _combine(parts, torch.cat(order), x.shape[0])

    def _group(self, x, mask, has_mask, label, has_label, amp_dtype, slice_mm, extras) -> dict:
        """The forward pass and losses of patches of one spacing.

        A network without a mask branch always pools where it would at inference: teacher forcing
        would show it masks it never sees there."""
        with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            if self.training and self.network.segments:
                forced = (torch.rand(x.shape[0], device=x.device) < self.teacher_forcing) & has_mask
            else:
                forced = torch.zeros_like(has_mask)
            out = self.network(x, mask, use_mask=forced, slice_mm=slice_mm).float()  # losses in fp32
        losses = self.loss(out, mask, has_mask, torch.nan_to_num(label), has_label, **extras)
        losses["outputs"] = out
        return losses


def _extras_of(extras: dict, idx: torch.Tensor) -> dict:
    """The extras of one group: teacher logits are (T, B), the rest (B,)."""
    picked = {}
    for key, value in extras.items():
        if value is None:
            picked[key] = None
        elif key == "teacher_logits":
            picked[key] = value[:, idx]
        else:
            picked[key] = value[idx]
    return picked


def _combine(parts: list[dict], order: torch.Tensor, batch: int) -> dict:
    """One result from the groups' results: each loss weighted by its group's share of the batch,
    each per-patch output back at its place in the batch."""
    weights = [len(p["outputs"].metastasis_logit) / batch for p in parts]
    result = {}
    for key in parts[0]:
        if key == "outputs":
            continue
        if key == "terms":
            result[key] = [sum(w * p[key][i] for w, p in zip(weights, parts)) for i in range(len(parts[0][key]))]
        else:
            result[key] = sum(w * p[key] for w, p in zip(weights, parts))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(batch, device=order.device)
    result["outputs"] = _combine_outputs([p["outputs"] for p in parts], inverse, batch)
    return result


def _combine_outputs(outputs: list[NetworkOutput], inverse: torch.Tensor, batch: int) -> NetworkOutput:
    def merge(values):
        first = values[0]
        if isinstance(first, torch.Tensor) and first.dim() and sum(len(v) for v in values) == batch:
            return torch.cat(values)[inverse]
        if isinstance(first, (list, tuple)) and first and isinstance(first[0], torch.Tensor):
            return type(first)(merge(list(v)) for v in zip(*values))
        return first  # not per patch (a routing gate's weights): the first group's
    return NetworkOutput(**{f.name: merge([getattr(o, f.name) for o in outputs])
                            for f in dataclasses.fields(NetworkOutput)})
