"""What the metastasis head reads besides pooled features: the node's shape and intensity under
its mask.

Mean pooling under the mask is size-blind by construction, yet size, elongation, margin and
internal density are what radiologists stage nodes by (short axis, long/short ratio, irregular
margin, necrosis, fatty hilum). These descriptors hand the head that information explicitly,
computed from the same (predicted, given or corrected) mask it pools under, so re-classifying an
edited mask changes them too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NUM_DESCRIPTORS = 7


def principal_diameters_mm(mask: torch.Tensor, spacing_mm: float) -> torch.Tensor:
    """(B, 3) ascending diameters of the ellipsoid with the mask's second moments: a solid
    ellipsoid of semi-axis a has variance a^2 / 5 along that axis, so d = 2 sqrt(5 lambda)."""
    b, _, d, h, w = mask.shape
    m = mask.float().flatten(1)
    n = m.sum(1).clamp_min(1.0)
    axes = [torch.arange(s, device=mask.device, dtype=torch.float32) * spacing_mm for s in (d, h, w)]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    coords = torch.stack([xx, yy, zz], dim=-1).view(1, -1, 3)
    mean = (m.unsqueeze(-1) * coords).sum(1) / n.unsqueeze(-1)
    centred = coords - mean.unsqueeze(1)
    cov = torch.einsum("bn,bni,bnj->bij", m, centred, centred) / n.view(-1, 1, 1)
    cov = cov + torch.eye(3, device=mask.device) * (spacing_mm**2 / 12.0)  # a voxel's own extent
    eig = torch.linalg.eigvalsh(cov.double()).float().clamp_min(0.0)
    return 2.0 * torch.sqrt(5.0 * eig)


def node_descriptors(mask: torch.Tensor, image: torch.Tensor, spacing_mm: float) -> torch.Tensor:
    """(B, 7): log volume, log principal diameters (3), surface-to-volume compactness, mean and SD
    of the windowed CT under the mask. All zero for an empty mask."""
    m = (mask > 0.5).float()
    voxels = m.flatten(1).sum(1)
    present = (voxels > 0).float().unsqueeze(1)
    volume = voxels * spacing_mm**3
    diam = principal_diameters_mm(m, spacing_mm)
    eroded = -F.max_pool3d(-m, kernel_size=3, stride=1, padding=1)
    surface = (m - eroded).flatten(1).sum(1)
    # surface voxels against a sphere's for this volume: 1 for a ball, larger when irregular
    compactness = surface / (4.84 * voxels.clamp_min(1.0) ** (2.0 / 3.0))
    inside = m.flatten(1)
    values = image.float().flatten(1)
    mean = (values * inside).sum(1) / voxels.clamp_min(1.0)
    sd = (((values - mean.unsqueeze(1)) ** 2 * inside).sum(1) / voxels.clamp_min(1.0)).sqrt()
    feats = torch.stack([
        torch.log1p(volume) / math.log(1e4),
        torch.log1p(diam[:, 0]) / math.log(30.0),
        torch.log1p(diam[:, 1]) / math.log(30.0),
        torch.log1p(diam[:, 2]) / math.log(30.0),
        compactness,
        mean,
        sd,
    ], dim=1)
    return feats * present


class NodeHeadInput(nn.Module):
    """Soft-mask pooled feature means and SDs at every scale, plus the node descriptors.

    Args:
        channels: feature channels per scale.
        pool_sigma_mm: context margin of the soft mask pooling (M2ANet).
        spacing_mm: patch voxel size.
    """

    def __init__(self, channels, pool_sigma_mm: float = 3.0, spacing_mm: float = 1.0):
        super().__init__()
        from .soft_mask_pooling import SoftMaskPooling

        self.pooling = SoftMaskPooling(pool_sigma_mm, spacing_mm, second_moment=True)
        self.spacing_mm = float(spacing_mm)
        self.width = 2 * sum(int(c) for c in channels) + NUM_DESCRIPTORS

    def forward(self, feats, mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        pooled = self.pooling(feats, mask)
        desc = node_descriptors(mask, image, self.spacing_mm)
        return torch.cat([pooled, desc.to(pooled.dtype)], dim=1)
