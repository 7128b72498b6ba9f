"""Node patches sampled on a fixed physical grid around each seed, straight from the CT array.

The patch grid is axis-aligned in RAS (x -> R, y -> A, z -> S, so tensor index [z, y, x]) and
centred on the seed, whatever the CT's orientation, flips or spacing: the network always sees the
same anatomy at the same scale. One grid_sample call samples every seed of a batch; points outside
the CT read as air (-1000 HU). No whole-volume copy or resampling is made.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..core.geometry import VolumeGeometry

AIR_HU = -1000.0


def patch_offsets_ras(size: int, spacing_mm: float, device=None) -> torch.Tensor:
    """(N, N, N, 3) RAS offsets (mm) of the patch voxel centres from the patch centre."""
    axis = (torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2.0) * spacing_mm
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def ras_to_normalized(points_ras: torch.Tensor, geometry: VolumeGeometry) -> torch.Tensor:
    """RAS points (..., 3) -> grid_sample coordinates (x=i, y=j, z=k in [-1, 1], align_corners)."""
    m = torch.as_tensor(geometry.ras_to_ijk, dtype=torch.float64, device=points_ras.device)
    ijk = points_ras @ m[:3, :3].T + m[:3, 3]
    size_ijk = torch.tensor(geometry.shape_kji[::-1], dtype=torch.float64, device=points_ras.device)
    return 2.0 * ijk / (size_ijk - 1.0) - 1.0


def volume_tensor(image: np.ndarray, device) -> torch.Tensor:
    """(1, 1, K, J, I) float32 view of the CT on `device` (no copy on CPU for float32 input)."""
    t = torch.as_tensor(image)
    if t.dtype != torch.float32:
        t = t.to(device=device).float()
    return t.to(device).view(1, 1, *image.shape)


def sample_patches(
    volume: torch.Tensor,
    geometry: VolumeGeometry,
    centres_ras: np.ndarray,
    size: int,
    spacing_mm: float,
    mode: str = "bilinear",
    outside_value: float = AIR_HU,
) -> torch.Tensor:
    """Sample (B, 1, N, N, N) patches centred on `centres_ras` (B, 3) from `volume` (1, 1, K, J, I).

    `mode` is "bilinear" (trilinear in 3-D) for CT, "nearest" for label maps.
    """
    device = volume.device
    centres = torch.as_tensor(np.asarray(centres_ras, dtype=float), dtype=torch.float64, device=device)
    offsets = patch_offsets_ras(size, spacing_mm, device)
    points = centres.view(-1, 1, 1, 1, 3) + offsets.unsqueeze(0)
    grid = ras_to_normalized(points, geometry)
    # Points beyond the outermost voxel centres get the outside value exactly, rather than a blend
    # of edge voxels and grid_sample's zero padding.
    outside = (grid.abs() > 1.0 + 1e-6).any(dim=-1)
    b = centres.shape[0]
    grid = grid.to(volume.dtype).reshape(1, b * size, size, size, 3)
    sampled = F.grid_sample(volume, grid, mode=mode, padding_mode="border", align_corners=True)
    sampled = sampled.view(b, 1, size, size, size)
    return sampled.masked_fill(outside.view(b, 1, size, size, size), outside_value)
