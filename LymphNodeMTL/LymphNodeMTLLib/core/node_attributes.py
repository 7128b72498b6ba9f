"""Node attributes a radiologist reads (or a phantom knows): optional columns of the nodes CSV.

Size, shape, a necrotic core, an irregular margin, a heterogeneous interior and a fatty hilum are
what a node is staged by. Where training nodes carry them, the soft-label refit of the head
(descriptor_refit.py) predicts them beside the node's logit, from the same hidden layer: a multi-task
fit whose extra outputs are dropped afterwards, so the head it leaves is the usual one. On the
phantoms (3318 training nodes, 5-fold case-wise CV) the auxiliary outputs
raised the refit's AUC by about 0.002 to 0.003: the hidden layer is pushed to encode the signs the
label depends on rather than whatever fits the logit on few nodes.

Each attribute is optional per node (empty cell) and per file (missing column).
"""

from __future__ import annotations

import math

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from .errors import InputError

# name: (lowest, highest) accepted value; the phantom generator's feature names (phantoms/features.py)
NODE_ATTRIBUTES = {
    "short_axis_mm": (0.5, 200.0),
    "axis_ratio": (1.0, 20.0),
    "necrosis_fraction": (0.0, 1.0),
    "margin_irregularity": (0.0, 1.0),
    "heterogeneity": (0.0, 1.0),
    "fatty_hilum": (0.0, 1.0),  # 0 absent, 1 present
}
ATTRIBUTE_NAMES = tuple(NODE_ATTRIBUTES)
LOG_SCALED = ("short_axis_mm",)  # size acts on the label (and on the image) by ratios


def read_attributes(row: dict, where: str) -> tuple[float, ...] | None:
    """The attributes of one nodes-CSV row (NaN where empty), or None when the row has none."""
    values = []
    for name, (low, high) in NODE_ATTRIBUTES.items():
        text = (row.get(name) or "").strip()
        if not text:
            values.append(math.nan)
            continue
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not low <= value <= high:  # also catches NaN
            raise InputError(f"{where}: {name} {text!r} is out of range; use a number from {low:g} to {high:g} or leave it empty")
        values.append(value)
    return None if all(math.isnan(v) for v in values) else tuple(values)


def attribute_targets(attributes: torch.Tensor) -> torch.Tensor:
    """(N, K) attributes, NaN where unknown -> (N, K') standardised float64 targets of the columns
    that at least two nodes know with some spread (NaN kept where unknown)."""
    import torch  # on first use: reading a manifest needs no torch

    x = attributes.double().clone()
    for name in LOG_SCALED:
        k = ATTRIBUTE_NAMES.index(name)
        x[:, k] = torch.log(x[:, k])
    known = ~torch.isnan(x)
    count = known.sum(0)
    mean = torch.where(known, x, 0.0).sum(0) / count.clamp_min(1)
    sd = (torch.where(known, (x - mean) ** 2, 0.0).sum(0) / (count - 1).clamp_min(1)).sqrt()
    keep = (count >= 2) & (sd > 1e-9)
    return ((x - mean) / sd.clamp_min(1e-9))[:, keep]
