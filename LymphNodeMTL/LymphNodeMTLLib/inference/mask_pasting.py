"""Node masks from the patch grid back into the CT grid, by bounding box only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.geometry import VolumeGeometry


@dataclass
class PastedProbability:
    """A node's mask probability in a box of the CT grid: [start, stop) along k, j, i."""

    start_kji: tuple[int, int, int]
    stop_kji: tuple[int, int, int]
    probability: np.ndarray  # float32, shape stop - start


def patch_bbox_kji(geometry: VolumeGeometry, centre_ras, size: int, spacing_mm: float):
    """The CT voxel box that covers a patch (its 8 corners), clipped to the volume."""
    half = (size - 1) / 2.0 * spacing_mm
    corners = np.array(
        [[sx, sy, sz] for sx in (-half, half) for sy in (-half, half) for sz in (-half, half)]
    ) + np.asarray(centre_ras, dtype=float)
    ijk = geometry.ras_to_ijk_points(corners)
    lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, np.asarray(geometry.shape_kji[::-1]))
    return tuple(lo[::-1].tolist()), tuple(hi[::-1].tolist())


def paste_patch_probability(
    patch_prob: torch.Tensor,
    geometry: VolumeGeometry,
    centre_ras,
    spacing_mm: float,
) -> PastedProbability:
    """Trilinearly resample one (N, N, N) patch probability into the CT voxels under the patch."""
    size = patch_prob.shape[-1]
    start, stop = patch_bbox_kji(geometry, centre_ras, size, spacing_mm)
    shape = tuple(b - a for a, b in zip(start, stop))
    if min(shape) <= 0:
        return PastedProbability(start, stop, np.zeros((0, 0, 0), np.float32))
    device = patch_prob.device
    k, j, i = (torch.arange(a, b, device=device, dtype=torch.float64) for a, b in zip(start, stop))
    kk, jj, ii = torch.meshgrid(k, j, i, indexing="ij")
    ijk = torch.stack([ii, jj, kk], dim=-1)
    m = torch.as_tensor(geometry.ijk_to_ras, dtype=torch.float64, device=device)
    ras = ijk @ m[:3, :3].T + m[:3, 3]
    centre = torch.as_tensor(np.asarray(centre_ras, dtype=float), dtype=torch.float64, device=device)
    # patch index of a RAS point, then grid_sample's [-1, 1] coordinates (x -> R, y -> A, z -> S)
    grid = ((ras - centre) / spacing_mm + (size - 1) / 2.0) * (2.0 / (size - 1)) - 1.0
    grid = grid.to(patch_prob.dtype).unsqueeze(0)
    prob = F.grid_sample(
        patch_prob.view(1, 1, size, size, size), grid, mode="bilinear",
        padding_mode="zeros", align_corners=True,
    )
    return PastedProbability(start, stop, prob.view(shape).float().cpu().numpy())
