"""The patch spacing the network measures in, set per batch.

The head reads the node in mm (soft-mask margin, volume, diameters; node_descriptors.py), and so
do the losses that regress a size from the mask. A patch resampled at 2 mm holds the same node in
half the voxels, so every module that converts voxels to mm keeps a `spacing_mm` attribute, and
whoever runs a batch at another spacing sets it for that batch: inference per zoom level,
training per group of patches that share a spacing.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def patch_spacing(module, spacing_mm: float):
    """Every submodule of `module` with a `spacing_mm` reads `spacing_mm` inside the block; the
    values they had are restored afterwards (also on an exception)."""
    while not isinstance(module, torch.nn.Module) and hasattr(module, "network"):
        module = module.network  # a wrapper around the network (a test double, a profiler)
    modules = [m for m in module.modules() if hasattr(m, "spacing_mm")] \
        if isinstance(module, torch.nn.Module) else []
    saved = [m.spacing_mm for m in modules]
    for m in modules:
        m.spacing_mm = float(spacing_mm)
    try:
        yield
    finally:
        for m, value in zip(modules, saved):
            m.spacing_mm = value


def spacing_groups(spacing_mm: torch.Tensor) -> list[tuple[float, torch.Tensor]]:
    """(spacing, indices) for each distinct spacing of a (B,) tensor, in increasing spacing; the
    indices of all groups together cover 0..B-1 once."""
    values = spacing_mm.detach().float().cpu()
    return [(float(v), torch.nonzero(values == v).flatten()) for v in torch.unique(values)]
