"""M2ANet-style mask-guided context pooling (docs/methods.md, section 1).

The node mask is softly expanded, w(x) = 1 inside and exp(-d(x)^2 / 2 sigma^2) outside (d = distance
to the mask in mm), and used as weights to average encoder features at every scale, so the
metastasis head sees the node and a margin of its context, and nothing else.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..batch_spacing import by_spacing


def soft_expand_mask(mask: torch.Tensor, sigma_mm: float, spacing_mm: float) -> torch.Tensor:
    """Soft weights w = max_y in mask exp(-|x - y|^2 / 2 sigma^2) for a (B, 1, D, H, W) binary mask.

    The max of a separable Gaussian over the mask is exactly exp(-d^2 / 2 sigma^2), and it
    factorises per axis, so three 1-D max-product passes give the exact grid result without a
    distance transform (which has no batched GPU implementation in torch).
    """
    weights = mask.float()
    radius = int(math.ceil(3.0 * sigma_mm / spacing_mm))
    taps = [
        (t, math.exp(-((t * spacing_mm) ** 2) / (2.0 * sigma_mm**2)))
        for t in range(-radius, radius + 1)
        if t != 0
    ]
    for dim in (2, 3, 4):
        size = weights.shape[dim]
        padded = F.pad(weights, _pad_for(dim, radius))
        out = weights.clone()
        for t, g in taps:
            shifted = padded.narrow(dim, radius + t, size)
            out = torch.maximum(out, shifted * g)
        weights = out
    return weights


def _pad_for(dim: int, radius: int) -> tuple[int, ...]:
    # F.pad lists pads from the last dimension backwards.
    pads = [0, 0, 0, 0, 0, 0]
    idx = 2 * (4 - dim)
    pads[idx] = pads[idx + 1] = radius
    return tuple(pads)


class SoftMaskPooling(nn.Module):
    """Weighted average of multi-scale features under the softly expanded node mask.

    Args:
        sigma_mm: width of the context margin outside the mask (methods.md: 2-5 mm).
        eps: avoids division by zero for an empty mask.
        second_moment: also return the weighted SD of every channel (texture, heterogeneity).
    """

    def __init__(self, sigma_mm: float = 3.0, eps: float = 1e-6, second_moment: bool = False):
        super().__init__()
        self.sigma_mm = float(sigma_mm)
        self.eps = float(eps)
        self.second_moment = bool(second_moment)

    def forward(self, features: list[torch.Tensor], mask: torch.Tensor, spacing_mm: torch.Tensor) -> torch.Tensor:
        """features: list of (B, C_s, D_s, H_s, W_s); mask: (B, 1, D, H, W) in {0, 1}; spacing_mm:
        (B,) patch voxel size at the finest scale (batch_spacing.py).

        Returns (B, sum C_s) pooled means, followed by (B, sum C_s) SDs with second_moment.
        """
        weights = by_spacing(lambda s, m: soft_expand_mask(m, self.sigma_mm, s), spacing_mm, mask)
        pooled, sds = [], []
        for feat in features:
            w = weights
            if w.shape[2:] != feat.shape[2:]:
                # area averaging keeps the weight mass per coarse voxel
                w = F.adaptive_avg_pool3d(w, feat.shape[2:])
            w = w.to(feat.dtype)
            den = w.sum(dim=(2, 3, 4)) + self.eps
            mean = (feat * w).sum(dim=(2, 3, 4)) / den
            pooled.append(mean)
            if self.second_moment:
                var = (feat.float() ** 2 * w).sum(dim=(2, 3, 4)) / den - mean.float() ** 2
                sds.append(var.clamp_min(0.0).add(self.eps).sqrt().to(mean.dtype))
        return torch.cat(pooled + sds, dim=1)
