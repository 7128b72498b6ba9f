"""The radiologist's prompts as network input channels, on a node's patch grid.

Besides the windowed CT and the seed guidance, a model with prompt channels reads five more, each
zero where its prompt is absent (so a seed alone reads as it always did):

- positive clicks: a Gaussian of the seed's width around each click that belongs to the node;
- negative clicks: the same around each click that does not (a leak to cut);
- the mask so far: the binary mask the earlier prompts gave (a click refines it);
- the long-axis line: a thin Gaussian tube along the segment a radiologist draws for RECIST;
- the box: 1 inside the box drawn around the node, 0 outside.

Coordinates are patch voxel indices in array order (z, y, x); the patch grid is axis-aligned in
RAS and centred on the patch centre (patch_sampler.py), so a point maps to it by one scale and shift.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

PROMPT_CHANNELS = ("positive_clicks", "negative_clicks", "mask_so_far", "long_axis_line", "box")
LINE_SIGMA_VOX = 1.0  # the tube's width: a drawn line marks the node's extent, not a region


@dataclass
class PatchPrompts:
    """One patch's prompts in patch voxel coordinates (z, y, x), floats.

    Attributes:
        positive: (P, 3) clicks on the node.
        negative: (Q, 3) clicks off the node.
        line: (2, 3) the long axis's two ends, or None.
        box: (2, 3) the box's low and high corners (voxel centres inside it are in), or None.
        mask_so_far: (N, N, N) bool, the mask the earlier prompts gave, or None.
    """

    positive: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    negative: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    line: np.ndarray | None = None
    box: np.ndarray | None = None
    mask_so_far: np.ndarray | torch.Tensor | None = None

    @property
    def empty(self) -> bool:
        return (not len(self.positive) and not len(self.negative) and self.line is None and self.box is None
                and self.mask_so_far is None)


def ras_to_patch_index(points_ras, centre_ras, spacing_mm: float, size: int) -> np.ndarray:
    """(K, 3) RAS points -> (K, 3) patch voxel coordinates (z, y, x) of a patch centred on centre_ras."""
    xyz = (np.asarray(points_ras, dtype=float).reshape(-1, 3) - np.asarray(centre_ras, dtype=float)) / spacing_mm
    return xyz[:, ::-1] + (size - 1) / 2.0


def patch_index_to_ras(index_zyx, centre_ras, spacing_mm: float, size: int) -> np.ndarray:
    """ras_to_patch_index's inverse."""
    zyx = np.asarray(index_zyx, dtype=float).reshape(-1, 3) - (size - 1) / 2.0
    return zyx[:, ::-1] * spacing_mm + np.asarray(centre_ras, dtype=float)


def _grid(size: int, device) -> torch.Tensor:
    axis = torch.arange(size, device=device, dtype=torch.float32)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    return torch.stack([z, y, x], dim=-1)  # (N, N, N, 3)


def _clicks(grid: torch.Tensor, points: np.ndarray, sigma: float) -> torch.Tensor:
    out = torch.zeros(grid.shape[:3], device=grid.device)
    for p in np.asarray(points, dtype=np.float32).reshape(-1, 3):
        d2 = ((grid - torch.as_tensor(p, device=grid.device)) ** 2).sum(-1)
        out = torch.maximum(out, torch.exp(-d2 / (2.0 * sigma**2)))
    return out


def _segment(grid: torch.Tensor, ends: np.ndarray) -> torch.Tensor:
    a, b = (torch.as_tensor(np.asarray(e, dtype=np.float32), device=grid.device) for e in ends)
    ab = b - a
    t = (((grid - a) @ ab) / ab.dot(ab).clamp_min(1e-6)).clamp(0.0, 1.0)
    d2 = ((grid - (a + t.unsqueeze(-1) * ab)) ** 2).sum(-1)
    return torch.exp(-d2 / (2.0 * LINE_SIGMA_VOX**2))


def _box(grid: torch.Tensor, corners: np.ndarray) -> torch.Tensor:
    lo, hi = (torch.as_tensor(np.asarray(c, dtype=np.float32), device=grid.device) for c in corners)
    return ((grid >= lo) & (grid <= hi)).all(-1).float()


def prompt_channels(prompts: list[PatchPrompts | None], size: int, sigma_vox: float,
                    device=None) -> torch.Tensor:
    """(B, 5, N, N, N) channels in PROMPT_CHANNELS order; a None or empty entry gives zeros."""
    out = torch.zeros(len(prompts), len(PROMPT_CHANNELS), size, size, size, device=device)
    grid = None
    for b, p in enumerate(prompts):
        if p is None or p.empty:
            continue
        if grid is None:
            grid = _grid(size, device)
        if len(p.positive):
            out[b, 0] = _clicks(grid, p.positive, sigma_vox)
        if len(p.negative):
            out[b, 1] = _clicks(grid, p.negative, sigma_vox)
        if p.mask_so_far is not None:
            out[b, 2] = torch.as_tensor(np.asarray(p.mask_so_far) if not isinstance(p.mask_so_far, torch.Tensor)
                                        else p.mask_so_far, device=device).float()
        if p.line is not None:
            out[b, 3] = _segment(grid, p.line)
        if p.box is not None:
            out[b, 4] = _box(grid, p.box)
    return out
