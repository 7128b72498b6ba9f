"""Temperature scaling: one scalar T so that sigmoid(logit / T) is calibrated on held-out nodes."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> float:
    """Minimise the held-out negative log-likelihood over log T. Returns T (1.0 without data)."""
    logits = logits.detach().double().flatten()
    labels = labels.detach().double().flatten()
    if logits.numel() < 2 or labels.min() == labels.max():
        return 1.0
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))
