"""MT-IDS dual-control branch routing (docs/methods.md, section 4; our reading).

For each task k, with shared experts E^s and task-specific experts E^k applied to the shared
bottleneck feature x (the coarsest encoder scale):

    z_k = beta_k * sum_e g^s_{k,e} E^s_e(x) + (1 - beta_k) * sum_e g^k_e E^k_e(x)
    g^s_k = softmax(W^s_k xbar),  g^k = softmax(W^k xbar),  beta_k = sigmoid(v_k . xbar + b_k)

xbar = global average of x. Close to PLE/MMoE: the gates decide, per node, how much each task
takes from the shared and from its own experts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks.dynunet_block import UnetResBlock
from torch import nn

from ..norm_layer import monai_norm


class RoutingGate(nn.Module):
    """Args:
        channels: channels of the bottleneck feature (experts keep them).
        tasks: task names, each gets its own gates and experts.
        shared_experts: number of shared experts.
        task_experts: number of experts per task.
        expert_kernel: kernel of the experts' residual blocks (1: per-voxel MLP experts, as in MMoE;
            the bottleneck already sees the whole patch).
        norm: MONAI norm name inside the experts.
    """

    def __init__(self, channels: int, tasks: Sequence[str], shared_experts: int = 2, task_experts: int = 1,
                 expert_kernel: int = 1, norm: str = "instance"):
        super().__init__()
        self.tasks = tuple(tasks)

        def expert():
            return UnetResBlock(3, channels, channels, kernel_size=int(expert_kernel), stride=1, norm_name=monai_norm(norm))

        self.shared_experts = nn.ModuleList(expert() for _ in range(int(shared_experts)))
        self.task_experts = nn.ModuleDict(
            {t: nn.ModuleList(expert() for _ in range(int(task_experts))) for t in self.tasks})
        self.shared_gate = nn.ModuleDict({t: nn.Linear(channels, int(shared_experts)) for t in self.tasks})
        self.task_gate = nn.ModuleDict({t: nn.Linear(channels, int(task_experts)) for t in self.tasks})
        self.balance = nn.ModuleDict({t: nn.Linear(channels, 1) for t in self.tasks})

    def shared_parameters(self):
        return self.shared_experts.parameters()

    def forward(self, x: torch.Tensor) -> tuple[dict, dict]:
        """x: (B, C, d, h, w). Returns ({task: z_k (B, C, d, h, w)},
        {task: {"shared": (B, E_s), "task": (B, E_k), "beta": (B,)}})."""
        xbar = x.mean(dim=(2, 3, 4))
        shared = torch.stack([e(x) for e in self.shared_experts], dim=1)  # (B, E_s, C, ...)
        outputs, weights = {}, {}
        for t in self.tasks:
            own = torch.stack([e(x) for e in self.task_experts[t]], dim=1)
            g_s = torch.softmax(self.shared_gate[t](xbar), dim=1)
            g_k = torch.softmax(self.task_gate[t](xbar), dim=1)
            beta = torch.sigmoid(self.balance[t](xbar)).squeeze(1)
            mix_s = (g_s.view(*g_s.shape, 1, 1, 1, 1).to(shared.dtype) * shared).sum(1)
            mix_k = (g_k.view(*g_k.shape, 1, 1, 1, 1).to(own.dtype) * own).sum(1)
            b = beta.view(-1, 1, 1, 1, 1).to(mix_s.dtype)
            outputs[t] = b * mix_s + (1 - b) * mix_k
            weights[t] = {"shared": g_s, "task": g_k, "beta": beta}
        return outputs, weights
