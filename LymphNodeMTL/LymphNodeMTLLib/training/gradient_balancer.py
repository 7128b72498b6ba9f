"""MT-IDS dual-dimensional gradient balancing, DD-GB (docs/methods.md, section 4; our reading).

On the shared parameters only, with one gradient g_i per task loss:
  1. direction (PCGrad): for every other task j, if g_i . g_j < 0,
     g_i <- g_i - (g_i . g_j / |g_j|^2) g_j   (projections against the original g_j);
  2. magnitude: every non-zero g_i is rescaled to a common norm, an exponential moving average of
     the mean task-gradient norm;
  3. the shared gradient is the sum.
Task-specific parameters keep the ordinary gradient of the summed loss.

Not for DistributedDataParallel runs: the per-task gradients are local, and overwriting the
synchronised shared gradients with them would let the ranks drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch


def project_conflicts(grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """PCGrad: remove from each flat gradient its component along every conflicting other one."""
    out = []
    for i, g in enumerate(grads):
        g = g.clone()
        for j, other in enumerate(grads):
            if i == j:
                continue
            dot = torch.dot(g, other)
            norm2 = torch.dot(other, other)
            if dot < 0 and norm2 > 0:
                g = g - dot / norm2 * other
        out.append(g)
    return out


class GradientBalancer:
    """Args:
        momentum: EMA momentum of the common gradient norm (0: the current mean norm).
        project: do the PCGrad direction step.
        rescale: do the magnitude step.
        eps: guards divisions by a zero norm.
    """

    def __init__(self, momentum: float = 0.9, project: bool = True, rescale: bool = True, eps: float = 1e-12):
        self.momentum = float(momentum)
        self.project = bool(project)
        self.rescale = bool(rescale)
        self.eps = float(eps)
        self.norm_ema: float | None = None

    def state_dict(self) -> dict:
        return {"norm_ema": self.norm_ema}

    def load_state_dict(self, state: dict) -> None:
        value = state.get("norm_ema")
        self.norm_ema = None if value is None else float(value)

    def balance(self, grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The per-task flat gradients after the direction and magnitude steps."""
        grads = [g.detach().float() for g in grads]
        if self.project:
            grads = project_conflicts(grads)
        if not self.rescale:
            return grads
        norms = [float(g.norm()) for g in grads]
        active = [n for n in norms if n > self.eps]
        if not active:
            return grads
        mean = sum(active) / len(active)
        self.norm_ema = mean if self.norm_ema is None else self.momentum * self.norm_ema + (1 - self.momentum) * mean
        return [g * (self.norm_ema / n) if n > self.eps else g for g, n in zip(grads, norms)]

    def combine(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(self.balance(grads)).sum(0)

    def backward(self, task_losses: Sequence[torch.Tensor], shared_params: Iterable[torch.nn.Parameter]) -> None:
        """Fills .grad of every parameter: the summed loss's gradient, except on `shared_params`,
        which get the balanced sum of the per-task gradients."""
        shared = [p for p in shared_params if p.requires_grad]
        flat = []
        for loss in task_losses:
            if not loss.requires_grad:
                flat.append(torch.zeros(sum(p.numel() for p in shared), device=shared[0].device))
                continue
            grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
            flat.append(torch.cat([
                (g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, shared)
            ]))
        total = sum(task_losses)
        total.backward()
        combined = self.combine(flat)
        offset = 0
        for p in shared:
            n = p.numel()
            p.grad = combined[offset:offset + n].view_as(p).to(p.dtype)
            offset += n
