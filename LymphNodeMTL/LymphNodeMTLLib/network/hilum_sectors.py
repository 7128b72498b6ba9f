"""Fatty-hilum signs read sector by sector around the node's long axis.

A fatty hilum is fat reaching into the node from one side (phantom-spec.md: a wedge from the
surface about a quarter of the radius deep; in a real node, the cleft of the bean, facing away
from its long axis). Averaged over the whole node it is a few per cent of fat and hides under noise,
partial volume and the margin (what the radial descriptors read). Seen around the long axis it is
one sector much darker than the others, so the node is cut into azimuthal sectors in the frame of
its moment ellipsoid, and the darkest sector is compared with the typical one:

- the sector HU drop: median sector mean minus the darkest sector mean (clipped HU, so a calcified
  or contrast-filled voxel cannot dominate);
- the same drop in units of its standard error (how sure, given the noise and the sector size);
- the mask gap: how much more of the ellipsoid shell the mask leaves out in its emptiest sector than
  in a typical one (a predicted mask tends to leave a hilum out, as fat).
"""

from __future__ import annotations

import math

import torch

SECTORS = 12  # 30 degree sectors around the long axis
SECTOR_SPAN = 2  # read in windows of two: 60 degrees, about a hilum wedge's opening
HU_SHELL = (0.4, 0.95)  # relative ellipsoid radius read for the HU: the wedge's depth, not the rim
MASK_SHELL = (0.6, 1.0)  # and for the mask gap: the outer part, where a left-out hilum shows
HU_CLIP = (-150.0, 150.0)
MIN_SECTOR_VOXELS = 4.0


def ellipsoid_frame(mean: torch.Tensor, cov: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) voxel coordinates in the frame of the moment ellipsoid, scaled so its surface is
    the unit sphere; the last axis is the long axis."""
    eig, vec = torch.linalg.eigh((5.0 * cov).double())  # ascending: the long axis last
    centred = (coords - mean.unsqueeze(1)).double()
    return (torch.einsum("bni,bij->bnj", centred, vec) / eig.clamp_min(1e-9).sqrt().unsqueeze(1)).float()


def _window_means(values: torch.Tensor, weights: torch.Tensor, sector: torch.Tensor):
    """(B, SECTORS) weighted means and weights over windows of SECTOR_SPAN adjacent sectors."""
    b = values.shape[0]
    sums = values.new_zeros(b, SECTORS).scatter_add_(1, sector, values * weights)
    counts = values.new_zeros(b, SECTORS).scatter_add_(1, sector, weights)
    sums = sum(sums.roll(i, 1) for i in range(SECTOR_SPAN))
    counts = sum(counts.roll(i, 1) for i in range(SECTOR_SPAN))
    return sums / counts.clamp_min(1.0), counts


def hilum_sector_signs(frame: torch.Tensor, hu: torch.Tensor, inside: torch.Tensor,
                       noise_hu: torch.Tensor) -> torch.Tensor:
    """(B, 3): sector HU drop / 100 HU, the drop in standard errors / 10, and the mask gap.

    Args:
        frame: (B, N, 3) from ellipsoid_frame.
        hu: (B, N) HU of the voxels.
        inside: (B, N) the binarised mask.
        noise_hu: (B,) the residual noise SD in HU, for the standard error.
    """
    radius = frame.norm(dim=-1)
    azimuth = torch.atan2(frame[..., 1], frame[..., 0])
    sector = ((azimuth + math.pi) * (SECTORS / (2.0 * math.pi))).long().clamp(0, SECTORS - 1)
    hu_shell = ((radius >= HU_SHELL[0]) & (radius < HU_SHELL[1])).float()
    means, counts = _window_means(hu.clamp(*HU_CLIP), hu_shell, sector)
    usable = counts >= MIN_SECTOR_VOXELS
    typical = torch.where(usable, means, means.new_tensor(float("nan"))).nanmedian(1).values
    darkest = torch.where(usable, means, means.new_tensor(float("inf"))).min(1)
    seen = usable.any(1)
    drop = torch.where(seen, typical - darkest.values, torch.zeros_like(typical))
    darkest_count = counts.gather(1, darkest.indices.unsqueeze(1)).squeeze(1)
    sure = (drop * darkest_count.sqrt() / (noise_hu + 1.0) / 10.0).clamp(-5.0, 5.0)
    mask_shell = ((radius >= MASK_SHELL[0]) & (radius < MASK_SHELL[1])).float()
    left_out, _ = _window_means(1.0 - inside, mask_shell, sector)
    gap = left_out.amax(1) - left_out.median(1).values
    return torch.stack([drop / 100.0, sure, gap], dim=1)
