"""MA-MTLN's homoscedastic-uncertainty task balancing (docs/methods.md, section 2).

L = sum_i 0.5 / sigma_i^2 * L_i + log(1 + sigma_i^2), with sigma_i learnable and initialised at 1.
"""

from __future__ import annotations

import torch
from torch import nn


class UncertaintyWeighting(nn.Module):
    """Learnable balance between task losses.

    Args:
        num_tasks: number of task losses combined.
    """

    def __init__(self, num_tasks: int = 2):
        super().__init__()
        self.sigma = nn.Parameter(torch.ones(num_tasks))

    def forward(self, losses: list[torch.Tensor]) -> torch.Tensor:
        sigma2 = self.sigma**2
        total = torch.zeros((), device=self.sigma.device)
        for i, loss in enumerate(losses):
            total = total + 0.5 / sigma2[i] * loss + torch.log1p(sigma2[i])
        return total

    def terms(self, losses: list[torch.Tensor]) -> list[torch.Tensor]:
        """The per-task terms 0.5 / sigma_i^2 * L_i + log(1 + sigma_i^2) (they sum to forward's total);
        the gradient balancer needs them one by one."""
        sigma2 = self.sigma**2
        return [0.5 / sigma2[i] * loss + torch.log1p(sigma2[i]) for i, loss in enumerate(losses)]
