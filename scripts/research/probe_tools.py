"""Shared by the research probes (not product code)."""
import torch
import torch.nn.functional as F
from torch import nn


def mlp_on_soft_targets(a, target, b, hidden=16, seeds=5, steps=1500):
    """Mean over seeds of a one-hidden-layer MLP fitted to `target` (the true logit) on rows `a`,
    evaluated on rows `b`: the soft-label refit of descriptor_refit.py, in the open."""
    out = []
    for s in range(seeds):
        torch.manual_seed(s)
        net = nn.Sequential(nn.Linear(a.shape[1], hidden), nn.GELU(), nn.Linear(hidden, 1)).double()
        opt = torch.optim.AdamW(net.parameters(), 3e-3, weight_decay=1e-2)
        for _ in range(steps):
            loss = F.mse_loss(net(a), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out.append(net(b)[:, 0])
    return torch.stack(out).mean(0)
