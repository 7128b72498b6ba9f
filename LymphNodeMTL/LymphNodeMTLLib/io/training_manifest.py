"""The training manifest: one CSV row per case, one nodes CSV per case.

manifest.csv: case_id,image,nodes[,label_map]   (paths relative to the manifest's folder)
nodes.csv:    id,r,a,s[,label][,mask_value][,soft_label][,attributes...]
              (RAS mm; label 0/1 or empty; mask_value = the node's value in the label map, or
              empty; soft_label = the probability that the node is metastatic, in [0, 1], or empty;
              attributes = any of short_axis_mm, axis_ratio, necrosis_fraction,
              margin_irregularity, heterogeneity, fatty_hilum, each a number or empty:
              node_attributes.py)
Nodes without a mask or without a label are kept: they train only the head they have.
A soft label is what a phantom knows exactly (its P) and what a hospital may have as a consensus
or follow-up confidence; where given, the descriptor refit fits the head to it (descriptor_refit.py).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import InputError
from ..core.node_attributes import read_attributes


@dataclass
class ManifestNode:
    node_id: str
    ras: tuple[float, float, float]
    label: int | None = None
    mask_value: int | None = None
    soft_label: float | None = None
    attributes: tuple[float, ...] | None = None  # ATTRIBUTE_NAMES order, NaN where unknown


@dataclass
class ManifestCase:
    case_id: str
    image: Path
    label_map: Path | None
    nodes: list[ManifestNode] = field(default_factory=list)
    nodes_csv: Path | None = None


def _optional_int(text: str, what: str, where: str) -> int | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return int(float(text))
    except ValueError:
        raise InputError(f"{where}: {what} {text!r} is not a number; use an integer or leave it empty") from None


def _optional_probability(text: str, where: str) -> float | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # also catches NaN
        raise InputError(f"{where}: soft_label {text!r} is not a probability; use a number from 0 to 1 or leave it empty")
    return value


def _rows(path: Path, required: set[str]) -> list[dict]:
    if not path.is_file():
        raise InputError(f"{path} does not exist; check the manifest paths")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = {h.strip().lower() for h in (reader.fieldnames or [])}
        if not required <= fields:
            raise InputError(
                f"{path} needs columns {', '.join(sorted(required))}; it has {', '.join(sorted(fields)) or 'none'}"
            )
        return [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]


def read_nodes_csv(path: Path) -> list[ManifestNode]:
    nodes = []
    for n, row in enumerate(_rows(path, {"id", "r", "a", "s"}), start=2):
        where = f"{path} line {n}"
        try:
            ras = (float(row["r"]), float(row["a"]), float(row["s"]))
        except ValueError:
            raise InputError(f"{where}: r, a, s must be numbers in mm") from None
        label = _optional_int(row.get("label", ""), "label", where)
        if label not in (None, 0, 1):
            raise InputError(f"{where}: label must be 0, 1 or empty, got {label}")
        nodes.append(ManifestNode(row["id"], ras, label, _optional_int(row.get("mask_value", ""), "mask_value", where),
                                  _optional_probability(row.get("soft_label", ""), where),
                                  read_attributes(row, where)))
    return nodes


def read_manifest(path) -> list[ManifestCase]:
    path = Path(path)
    root = path.parent
    cases = []
    for row in _rows(path, {"case_id", "image", "nodes"}):
        label_map = row.get("label_map") or ""
        cases.append(
            ManifestCase(
                row["case_id"],
                root / row["image"],
                (root / label_map) if label_map else None,
                read_nodes_csv(root / row["nodes"]),
                root / row["nodes"],
            )
        )
    if not cases:
        raise InputError(f"{path} lists no cases; add one row per case")
    return cases
