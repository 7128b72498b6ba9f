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
from .output_folder import atomic_output

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
