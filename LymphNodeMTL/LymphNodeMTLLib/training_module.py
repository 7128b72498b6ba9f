"""Network + multi-task loss as one module, so DistributedDataParallel syncs both (the uncertainty
weights are learnable too) and one forward call computes the losses."""

from __future__ import annotations

import torch
from torch import nn

from .multitask_loss import MultiTaskLoss
from .node_network import MultiTaskNodeNet


class MultiTaskTrainingModule(nn.Module):
    """Args:
        network: the multi-task network being trained.
        teacher_forcing: share of nodes (with a true mask) whose metastasis head pools under the
            true mask instead of the predicted one.
    """

    def __init__(self, network: MultiTaskNodeNet, teacher_forcing: float = 0.5):
        super().__init__()
        self.network = network
        self.loss = MultiTaskLoss()
        self.teacher_forcing = float(teacher_forcing)

    def forward(self, x, mask, has_mask, label, has_label, amp_dtype=None) -> dict:
        with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            feats = self.network.encode(x)
            mask_logits = self.network.decode(feats)
            predicted = self.network.fallback_mask(mask_logits.detach() > 0, x)
            if self.training:
                forced = (torch.rand(x.shape[0], device=x.device) < self.teacher_forcing) & has_mask
            else:
                forced = torch.zeros_like(has_mask)
            pool_mask = torch.where(forced.view(-1, 1, 1, 1, 1), mask, predicted)
            logit = self.network.classify(feats, pool_mask)
        out = {"mask_logits": mask_logits.float(), "metastasis_logit": logit.float()}  # losses in fp32
        losses = self.loss(out, mask, has_mask, torch.nan_to_num(label), has_label)
        losses["outputs"] = out
        return losses
