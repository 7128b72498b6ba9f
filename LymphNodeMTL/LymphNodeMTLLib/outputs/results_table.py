"""The per-node results table as CSV: one row per node, for spreadsheets and statistics tools.

Numbers are rounded to what is meaningful (probability 4 decimals, millimetres and mm^3
2 decimals, HU 1 decimal); a value that is not known (NaN) is an empty cell. A node without a
usable mask (its `status` says why, core/node_status.py) has empty probability and label cells.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from ..core import node_status
from ..core.node_result import NodeResult
from .segmentation_writer import atomic_output

COLUMNS = (
    "id",
    "seed_r",
    "seed_a",
    "seed_s",
    "probability",
    "predicted_label",
    "volume_mm3",
    "short_axis_mm",
    "long_axis_mm",
    "mean_hu",
    "sd_hu",
    "status",
    "mask_agreement",
    "probability_low",
    "probability_high",
    "field_of_view_mm",
)
# Columns a table written before statuses and uncertainty lacks; read as unknown.
OPTIONAL_COLUMNS = ("status", "mask_agreement", "probability_low", "probability_high", "field_of_view_mm")
# Cells a node without a usable mask leaves empty, whatever its result holds.
_PROBABILITY_COLUMNS = ("probability", "probability_low", "probability_high")
# Decimals per float column; `id` and `status` are text and `predicted_label` an integer.
_DECIMALS = {
    "seed_r": 2,
    "seed_a": 2,
    "seed_s": 2,
    "probability": 4,
    "volume_mm3": 2,
    "short_axis_mm": 2,
    "long_axis_mm": 2,
    "mean_hu": 1,
    "sd_hu": 1,
    "mask_agreement": 3,
    "probability_low": 4,
    "probability_high": 4,
    "field_of_view_mm": 1,
}


def write_results_csv(path, results: list[NodeResult]) -> Path:
    """Write one row per node (columns COLUMNS, in results order) atomically; return the path."""
    path = Path(path)
    with atomic_output(path) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(_row(result) for result in results)
    return path


def _row(result: NodeResult) -> dict[str, str]:
    r, a, s = result.seed_ras
    values = {
        "seed_r": r,
        "seed_a": a,
        "seed_s": s,
        "probability": result.probability,
        "volume_mm3": result.volume_mm3,
        "short_axis_mm": result.short_axis_mm,
        "long_axis_mm": result.long_axis_mm,
        "mean_hu": result.mean_hu,
        "sd_hu": result.sd_hu,
        "mask_agreement": result.mask_agreement,
        "probability_low": result.probability_low,
        "probability_high": result.probability_high,
        "field_of_view_mm": result.field_of_view_mm,
    }
    usable = node_status.has_usable_mask(result.status)
    row = {column: _format(value if usable or column not in _PROBABILITY_COLUMNS else None, _DECIMALS[column])
           for column, value in values.items()}
    row["id"] = str(result.node_id)
    label = int(result.predicted_label)
    row["predicted_label"] = "" if label < 0 or not usable else str(label)
    row["status"] = str(result.status)
    return row


def _format(value, decimals: int) -> str:
    if value is None or not math.isfinite(float(value)):
        return ""
    return f"{float(value):.{decimals}f}"


def read_results_csv(path) -> list[dict]:
    """Rows as dicts keyed by COLUMNS: `id` and `status` str, `predicted_label` int
    (node_status.UNKNOWN_LABEL if empty), others float (NaN if empty). A table without
    OPTIONAL_COLUMNS reads them as unknown (status "").

    Raises ValueError when a column is missing, naming it.
    """
    with open(path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ()) and c not in OPTIONAL_COLUMNS]
        if missing:
            raise ValueError(f"{path}: results table lacks column(s) {', '.join(missing)}")
        return [_parse_row(row) for row in reader]


def _parse_row(row: dict[str, str]) -> dict:
    parsed = {column: _parse_float(row.get(column) or "") for column in _DECIMALS}
    parsed["id"] = row["id"]
    label = row["predicted_label"].strip()
    parsed["predicted_label"] = int(label) if label else node_status.UNKNOWN_LABEL
    parsed["status"] = row.get("status") or ""
    return {column: parsed[column] for column in COLUMNS}


def _parse_float(text: str) -> float:
    return float(text) if text.strip() else math.nan
