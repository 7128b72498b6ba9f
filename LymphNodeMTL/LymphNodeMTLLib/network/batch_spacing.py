"""The patch spacing travels with the batch: a (B,) tensor of each patch's voxel size in mm.

The head reads the node in mm (soft-mask margin, volume, diameters; node_descriptors.py), and so
do the losses that regress a size from the mask. A patch resampled at 2 mm holds the same node in
half the voxels, so whatever converts voxels to mm takes the batch's `spacing_mm` as an argument,
the way `slice_mm` travels: inference passes one value per zoom level, training one per patch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def spacing_of_batch(spacing_mm, batch: int, default_mm: float, device=None) -> torch.Tensor:
    """(B,) float32 patch spacing: `spacing_mm` as given (a (B,) tensor or one number for the whole
    batch), or `default_mm` (the network's own spacing) where it is None."""
    if spacing_mm is None:
        spacing_mm = default_mm
    if isinstance(spacing_mm, torch.Tensor):
        if spacing_mm.shape != (batch,):
            raise ValueError(f"spacing_mm must hold one value per patch ({batch}), got shape {tuple(spacing_mm.shape)}")
        return spacing_mm.to(device=device, dtype=torch.float32)
    return torch.full((batch,), float(spacing_mm), device=device)


def spacing_groups(spacing_mm: torch.Tensor) -> list[tuple[float, torch.Tensor]]:
    """(spacing, indices) for each distinct spacing of a (B,) tensor, in increasing spacing; the
    indices of all groups together cover 0..B-1 once."""
    values = spacing_mm.detach().float().cpu()
    return [(float(v), torch.nonzero(values == v).flatten()) for v in torch.unique(values)]


def by_spacing(fn: Callable[..., torch.Tensor], spacing_mm: torch.Tensor | float,
               *batched: torch.Tensor) -> torch.Tensor:
    """fn(spacing as a number, *rows) over each group of patches that share a spacing (`spacing_mm`:
    (B,), or one number for all), its output rows put back in batch order. A batch of one spacing
    (every inference batch) is one call on the tensors as given, so its result is exactly fn's."""
    if not isinstance(spacing_mm, torch.Tensor):
        return fn(float(spacing_mm), *batched)
    groups = spacing_groups(spacing_mm)
    if len(groups) == 1:
        return fn(groups[0][0], *batched)
    parts, order = [], []
    for spacing, idx in groups:
        idx = idx.to(batched[0].device)
        parts.append(fn(spacing, *(t[idx] for t in batched)))
        order.append(idx)
    return torch.cat(parts)[torch.argsort(torch.cat(order))]
