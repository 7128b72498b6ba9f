"""The follow-up table as CSV: one row per node with both time points and the change, and the case's
nodal response as JSON.

Rows: the baseline nodes in the baseline's order, then the nodes added at follow-up. A value not
known is an empty cell: a new node has no baseline, a node not found has size 0 and no
probability, a node whose registration is uncertain has its sizes but no change.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from ..core import nodal_response as recist
from ..core import node_status
from .output_folder import atomic_output

COLUMNS = (
    "id", "status", "target", "seed_r", "seed_a", "seed_s",
    "baseline_short_axis_mm", "follow_up_short_axis_mm", "short_axis_change_mm", "short_axis_change_percent",
    "baseline_long_axis_mm", "follow_up_long_axis_mm", "long_axis_change_mm",
    "baseline_volume_mm3", "follow_up_volume_mm3", "volume_change_percent",
    "baseline_probability", "follow_up_probability",
    "local_correlation", "local_shift_mm",
)
_DECIMALS = {"seed_r": 2, "seed_a": 2, "seed_s": 2, "baseline_probability": 4, "follow_up_probability": 4,
             "local_correlation": 3, "local_shift_mm": 2, "short_axis_change_percent": 1,
             "volume_change_percent": 1}


def change_row(change) -> dict[str, float | str | None]:
    """One node's values (inference/follow_up_study.NodeChange), unformatted: the CSV and the
    report's text read the same numbers."""
    before, after = change.baseline, change.follow_up

    def at_follow_up(value):
        if after.status == node_status.NOT_FOUND:
            return 0.0
        return value if node_status.has_usable_mask(after.status) and not after.is_empty else None

    row = {"id": change.node_id, "status": change.status, "target": "yes" if change.target else "no",
           "seed_r": after.seed_ras[0], "seed_a": after.seed_ras[1], "seed_s": after.seed_ras[2]}
    for name in ("short_axis_mm", "long_axis_mm", "volume_mm3"):
        row[f"baseline_{name}"] = getattr(before, name) if before is not None and not before.is_empty else None
        row[f"follow_up_{name}"] = at_follow_up(getattr(after, name))
    row["baseline_probability"] = before.probability if before is not None else None
    row["follow_up_probability"] = after.probability
    carried = change.carried
    row["local_correlation"] = carried.local_correlation if carried is not None else None
    row["local_shift_mm"] = carried.local_shift_mm if carried is not None else None
    return with_changes(row, change.measured)  # an uncertain registration shows its sizes, not a change


def with_changes(row: dict, measured: bool) -> dict:
    """The row's change columns from its two time points; none when the follow-up size does not
    count (`measured` False) or a time point has no size."""
    b_sa, a_sa = row["baseline_short_axis_mm"], row["follow_up_short_axis_mm"]
    comparable = measured and b_sa is not None and a_sa is not None
    row["short_axis_change_mm"] = a_sa - b_sa if comparable else None
    row["short_axis_change_percent"] = 100.0 * (a_sa - b_sa) / b_sa if comparable and b_sa > 0 else None
    b_la, a_la = row["baseline_long_axis_mm"], row["follow_up_long_axis_mm"]
    row["long_axis_change_mm"] = a_la - b_la if comparable and b_la is not None and a_la is not None else None
    b_v, a_v = row["baseline_volume_mm3"], row["follow_up_volume_mm3"]
    row["volume_change_percent"] = (100.0 * (a_v - b_v) / b_v if comparable and b_v and a_v is not None else None)
    return row


def remeasured_row(row: dict, result) -> dict:
    """The row with its follow-up time point measured again from `result` (the radiologist's corrected
    mask, classified; None: the mask was erased, the node is not found) and its changes recomputed.
    A corrected mask is the radiologist's: its size counts whatever the registration said."""
    row = dict(row)
    if result is None or result.is_empty:
        row.update(status=node_status.NOT_FOUND, follow_up_probability=None)
        for name in ("short_axis_mm", "long_axis_mm", "volume_mm3"):
            row[f"follow_up_{name}"] = 0.0
        return with_changes(row, True)
    usable = node_status.has_usable_mask(result.status)
    row["status"] = result.status
    for name in ("short_axis_mm", "long_axis_mm", "volume_mm3"):
        row[f"follow_up_{name}"] = getattr(result, name) if usable else None
    row["follow_up_probability"] = result.probability if usable else None
    return with_changes(row, usable)


def response_of_rows(rows: list[dict]) -> recist.NodalResponse:
    """The nodal response from the table's rows (change_row's or remeasured_row's): the sizes that
    count at follow-up, as nodal_response_of takes them from a study. Rows with no baseline size are
    nodes new at follow-up."""

    def after(row):
        if row["status"] == node_status.NOT_FOUND:
            return 0.0
        counts = row.get("short_axis_change_mm") is not None or row["baseline_short_axis_mm"] is None
        return _size(row["follow_up_short_axis_mm"]) if counts else math.nan

    baseline = [r for r in rows if r["baseline_volume_mm3"] is not None]
    new = [r for r in rows if r["baseline_volume_mm3"] is None]
    return recist.nodal_response({r["id"]: _size(r["baseline_short_axis_mm"]) for r in baseline},
                                 {r["id"]: after(r) for r in baseline}, {r["id"]: after(r) for r in new})


def _size(value) -> float:
    return math.nan if value is None else float(value)


def write_follow_up_csv(path, changes) -> Path:
    """Write one row per node (COLUMNS) atomically; return the path."""
    path = Path(path)
    with atomic_output(path) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            for change in changes:
                writer.writerow({k: format_cell(k, v) for k, v in change_row(change).items()})
    return path


def write_response_json(path, study) -> Path:
    """The case's nodal response (core/nodal_response.py) and every node's status, as JSON."""
    path = Path(path)
    document = study.response.as_dict()
    document["nodes"] = {c.node_id: c.status for c in study.changes}
    with atomic_output(path, suffix=".json") as temporary:
        temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def format_cell(column: str, value) -> str:
    """A value as the CSV (and the module's table) shows it: fixed decimals, empty when not known."""
    if value is None or isinstance(value, str):
        return value or ""
    if not math.isfinite(float(value)):
        return ""
    return f"{float(value):.{_DECIMALS.get(column, 2)}f}"
