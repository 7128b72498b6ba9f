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
    try:
        # utf-8-sig: a byte-order mark (spreadsheet exports) is not part of the first column name
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = {h.strip().lower() for h in (reader.fieldnames or [])}
            if not required <= fields:
                raise InputError(
                    f"{path} needs columns {', '.join(sorted(required))}; it has {', '.join(sorted(fields)) or 'none'}"
                )
            return [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except UnicodeDecodeError as e:
        raise InputError(
            f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}, e.g. Latin-1 "
            "from a spreadsheet); save it as UTF-8 CSV"
        ) from None
    except csv.Error as e:
        raise InputError(f"{path} is not a valid CSV file ({e}); save it as plain CSV") from None


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


def check_same_grid(label_geometry, ct_geometry, label_path, ct_path) -> None:
    """A label map must lie on its CT's voxel grid: mask values are read voxel by voxel."""
    if not label_geometry.same_grid(ct_geometry, tol=1e-3):
        raise InputError(
            f"label map {Path(label_path).name} is on another voxel grid than its CT "
            f"{Path(ct_path).name} (size {'x'.join(map(str, label_geometry.shape_kji[::-1]))} vs "
            f"{'x'.join(map(str, ct_geometry.shape_kji[::-1]))}, or origin, spacing or direction); "
            "resample it onto the CT (e.g. in 3D Slicer) and save it again"
        )


def check_manifest_geometry(cases: list[ManifestCase]) -> None:
    """Before training: every node lies inside its CT and every label map on its CT's grid, read
    from the image headers only. A node outside its CT would train on padding (air)."""
    for case in cases:
        ct = _header_geometry(case.image)
        if case.label_map is not None:
            check_same_grid(_header_geometry(case.label_map), ct, case.label_map, case.image)
        if not case.nodes:
            continue
        import numpy as np

        ras = np.array([n.ras for n in case.nodes], dtype=float)
        inside = ct.contains_ras(ras)
        if not np.all(inside):
            node = case.nodes[int(np.argmin(inside))]
            raise InputError(
                f"{case.nodes_csv or case.case_id}: node {node.node_id} at RAS ({node.ras[0]:.1f}, "
                f"{node.ras[1]:.1f}, {node.ras[2]:.1f}) mm is outside its CT {case.image.name}; check "
                "that the nodes belong to this CT and are in RAS (not LPS) millimetres"
            )


def _header_geometry(path: Path):
    """The image's grid from its header (a DICOM folder is read whole)."""
    from .volume_reader import read_volume_geometry

    return read_volume_geometry(path)
