"""nodes.csv read back for tests, to compare what the writer (outputs/results_table.py) wrote."""

from __future__ import annotations

import csv
import math

from LymphNodeMTLLib.core.node_status import UNKNOWN_LABEL
from LymphNodeMTLLib.outputs.results_table import COLUMNS

_TEXT_COLUMNS = ("id", "status", "predicted_label")


def read_results_csv(path) -> list[dict]:
    """Rows as dicts keyed by COLUMNS: `id` and `status` str, `predicted_label` int (UNKNOWN_LABEL
    if empty), others float (NaN if empty). Raises ValueError when a column is missing, naming it."""
    with open(path, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: results table lacks column(s) {', '.join(missing)}")
        return [_parse_row(row) for row in reader]


def _parse_row(row: dict[str, str]) -> dict:
    parsed = {c: _parse_float(row[c]) for c in COLUMNS if c not in _TEXT_COLUMNS}
    label = row["predicted_label"].strip()
    parsed.update(id=row["id"], status=row["status"],
                  predicted_label=int(label) if label else UNKNOWN_LABEL)
    return {column: parsed[column] for column in COLUMNS}


def _parse_float(text: str) -> float:
    return float(text) if text.strip() else math.nan
