"""Which status a node's result gets (core/node_status.py), and what a status takes away.

In order of precedence: a seed not on soft tissue, an empty mask (also a mask the network drew in
fat only, holds_only_fat, and a fragment too small to be a node, is_fragment: the engine empties
both), a mask cut by the field of view
or by the CT's own edge, a mask unstable under a threshold change (mask_confidence.py), else ok. A node whose status
leaves no usable mask gets no probability and no label, so no output can show a confident-looking
number for it; the network's own figure stays in `network_probability` for evaluation.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..core import node_status
from ..core.geometry import VolumeGeometry
from ..core.node_result import NodeResult

# Soft tissue at the seed: above lung and air (below -250 HU, also the bottom of the network's HU
# window) and below bone, calcification and dense contrast (above 300 HU). Fat is included: a
# node's fatty hilum is part of the node.
SOFT_TISSUE_HU = (-250.0, 300.0)
SEED_BALL_MM = 2.0  # the seed's HU is the median within this radius (noise, a slightly off click)


def seed_hu(hu_patches: torch.Tensor, spacing_mm: float) -> np.ndarray:
    """(B,) median HU within SEED_BALL_MM of the patch centre of (B, 1, N, N, N) HU patches."""
    n = hu_patches.shape[-1]
    r = max(1, int(math.ceil(SEED_BALL_MM / spacing_mm)))
    lo, hi = max(0, (n - 1) // 2 - r), min(n, n // 2 + r + 1)
    core = hu_patches[:, 0, lo:hi, lo:hi, lo:hi].float()
    axis = (torch.arange(lo, hi, dtype=torch.float32, device=core.device) - (n - 1) / 2.0) * spacing_mm
    d2 = axis.view(-1, 1, 1) ** 2 + axis.view(1, -1, 1) ** 2 + axis.view(1, 1, -1) ** 2
    inside = d2 <= max(SEED_BALL_MM, spacing_mm) ** 2
    return core[:, inside].median(dim=1).values.cpu().numpy()


def in_soft_tissue(hu: float) -> bool:
    return SOFT_TISSUE_HU[0] <= float(hu) <= SOFT_TISSUE_HU[1]


# A mask at least three quarters of which reads as fat holds no node tissue: a blob the network drew
# around a seed placed in fat. A fatty hilum is a part of a node, never three quarters of it: on
# the phantom test sets the lowest 75th percentile of a true node mask is -52 HU (partial volume of
# a few-voxel node); fat itself reads -150 to -80 HU.
FAT_ONLY_P75_HU = -60.0


def holds_only_fat(result: NodeResult, image: np.ndarray) -> bool:
    """Whether the CT under a non-empty mask is fat for at least three quarters of its voxels."""
    if result.is_empty:
        return False
    values = image[result.slices()][result.mask]
    return bool(np.percentile(values, 75) < FAT_ONLY_P75_HU)


# A mask smaller than a ball this many voxels across, at the spacing of the view it was drawn in,
# is a fragment, not a node: at the finest view (1 mm) 2.5 mm, below the smallest node a reader
# measures (3 mm short axis, the phantom spec's smallest); a coarser view was chosen for something
# larger, and a few of its voxels are what is left of a node the network lost (an 89 mm mass seen
# at 2.08 mm came out as 8 voxels). The smallest mask of a node segmented well (Dice >= 0.8) on
# the stress set holds 34 voxels of its view.
MIN_MASK_DIAMETER_VOXELS = 2.5


def min_mask_volume_mm3(view_spacing_mm: float) -> float:
    """The smallest mask (mm^3) that counts as a node, for a view of this spacing."""
    return math.pi / 6.0 * (MIN_MASK_DIAMETER_VOXELS * float(view_spacing_mm)) ** 3


def is_fragment(result: NodeResult, geometry: VolumeGeometry, view_spacing_mm: float) -> bool:
    """Whether a non-empty mask is smaller than min_mask_volume_mm3 of its view."""
    if result.is_empty:
        return False
    volume = float(result.mask.sum()) * float(np.prod(geometry.spacing))
    return volume < min_mask_volume_mm3(view_spacing_mm)


# The network's mask of a node the CT cuts fades just before the CT's edge (it sees air-padding
# beyond it): a mask this many voxel layers from the edge counts as reaching it.
EDGE_LAYERS = 2
# and never less than this far: a node cut by the CT's edge is drawn up to about 2 mm short of it
# (the patch beyond the edge reads as outside the body), on thin slices more than two layers
EDGE_MM = 2.0


def touches_volume_edge(result: NodeResult, geometry: VolumeGeometry) -> bool:
    """Whether a non-empty mask reaches the CT's outermost voxel layers (EDGE_LAYERS, at least
    EDGE_MM deep): the node is cut."""
    if result.is_empty:
        return False
    layers = [max(EDGE_LAYERS, math.ceil(EDGE_MM / s - 1e-6)) for s in geometry.spacing[::-1]]
    return any(a < m or b > n - m
               for a, b, n, m in zip(result.bbox_start_kji, result.bbox_stop_kji, geometry.shape_kji, layers))


def node_status_of(result: NodeResult, seed_in_soft_tissue: bool, cut_by_view: bool, geometry: VolumeGeometry,
                   low_agreement_below: float) -> str:
    """The one status of a node's result (module docstring for the precedence)."""
    if not seed_in_soft_tissue:
        return node_status.SEED_NOT_IN_SOFT_TISSUE
    if result.is_empty:
        return node_status.EMPTY_MASK
    if cut_by_view or touches_volume_edge(result, geometry):
        return node_status.TOUCHES_FIELD_OF_VIEW
    if math.isfinite(result.mask_agreement) and result.mask_agreement < low_agreement_below:
        return node_status.LOW_AGREEMENT
    return node_status.OK


def apply_status(result: NodeResult, status: str) -> None:
    """Set the status; without a usable mask, clear the probability, its interval and the label."""
    result.status = status
    if node_status.has_usable_mask(status):
        return
    if math.isfinite(result.probability):
        result.network_probability = float(result.probability)
    result.probability = float("nan")
    result.probability_low = float("nan")
    result.probability_high = float("nan")
    result.predicted_label = node_status.UNKNOWN_LABEL

