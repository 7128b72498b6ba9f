"""Auxiliary tasks (MT-IDS, docs/methods.md section 4; also the SD-MdaNet mixed head's target).

- Short-axis regression: always available where a node has a mask. The target is the node's
  smallest principal diameter, from the mask's second moments: a solid ellipsoid with semi-axis a
  has variance a^2/5 along it, so diameter = 2 sqrt(5 lambda_min). A 3-D proxy of the RECIST short
  axis, computed batched on the patch grid. Regressed in units of 10 mm.
- Station classification (IASLC station): when the data carry a station per node (-1 unknown).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..node_descriptors import principal_diameters_mm

SHORT_AXIS_UNIT_MM = 10.0


def short_axis_from_mask(mask: torch.Tensor, spacing_mm: torch.Tensor | float) -> torch.Tensor:
    """(B, 1, D, H, W) binary masks on patches of spacing_mm ((B,), or one number for all) -> (B,)
    smallest principal diameter in mm (0 for empty masks)."""
    diameter = principal_diameters_mm(mask, spacing_mm)[:, 0]
    present = mask.flatten(1).sum(1) > 0
    return torch.where(present, diameter, torch.zeros_like(diameter))


class ShortAxisHead(nn.Module):
    """Pooled features -> short axis in units of 10 mm.

    Args:
        in_features: width of the pooled feature vector.
        hidden: hidden width.
    """

    def __init__(self, in_features: int, hidden: int = 32):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.mlp(pooled).squeeze(1)


class StationHead(nn.Module):
    """Pooled features -> station logits.

    Args:
        in_features: width of the pooled feature vector.
        num_stations: number of station classes.
    """

    def __init__(self, in_features: int, num_stations: int):
        super().__init__()
        self.fc = nn.Linear(in_features, int(num_stations))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(pooled)


def short_axis_loss(predicted: torch.Tensor, mask: torch.Tensor, has_mask: torch.Tensor,
                    spacing_mm: torch.Tensor) -> torch.Tensor:
    """MSE between predicted and measured short axis (units of 10 mm) over nodes with a mask;
    spacing_mm: (B,) patch voxel size."""
    if not bool(has_mask.any()):
        return predicted.sum() * 0.0
    idx = has_mask.nonzero().flatten()
    target = short_axis_from_mask(mask[idx], spacing_mm[idx.to(spacing_mm.device)]) / SHORT_AXIS_UNIT_MM
    return F.mse_loss(predicted[idx].float(), target)


def station_loss(logits: torch.Tensor, station: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy over nodes with a known station (station >= 0)."""
    if station is None or not bool((station >= 0).any()):
        return logits.sum() * 0.0
    known = station >= 0
    return F.cross_entropy(logits[known].float(), station[known].long())
