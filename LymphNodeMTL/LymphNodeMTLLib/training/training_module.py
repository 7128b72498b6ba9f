"""Network + multi-task loss as one module, so DistributedDataParallel syncs both (the uncertainty
weights are learnable too) and one forward call computes the losses."""

from __future__ import annotations

import torch
from torch import nn

from ..network.batch_spacing import spacing_of_batch
from ..network.node_network import MultiTaskNodeNet
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
                spacing_mm=None, **extras) -> dict:
        """One forward call with per-node teacher forcing, then the losses (and "outputs": the
        NetworkOutput in fp32). slice_mm: (B,) source CT slice thickness (node_descriptors);
        spacing_mm: (B,) each patch's voxel size (None: the network's own; batch_spacing.py);
        extras (the optional components' losses): teacher_logits (T, B), station (B,).

        A network without a mask branch always pools where it would at inference: teacher forcing
        would show it masks it never sees there."""
        spacing_mm = spacing_of_batch(spacing_mm, x.shape[0], self.network.config.patch_spacing_mm, x.device)
        with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            if self.training and self.network.segments:
                forced = (torch.rand(x.shape[0], device=x.device) < self.teacher_forcing) & has_mask
            else:
                forced = torch.zeros_like(has_mask)
            out = self.network(x, mask, use_mask=forced, slice_mm=slice_mm, spacing_mm=spacing_mm)
            out = out.float()  # losses in fp32
        losses = self.loss(out, mask, has_mask, torch.nan_to_num(label), has_label, spacing_mm, **extras)
        losses["outputs"] = out
        return losses
