"""A cohort's summary CSV: one row per case of the manifest (or of its shard), in manifest order.

    case_id,status,reason,out,seconds,<the command's own columns, e.g. nodes,metastatic,to_review>

status: `done` (run now), `already_done` (finished by an earlier run, skipped), `failed` (reason:
the one line that says why) or `pending` (not run yet: the summary is rewritten after every case,
so a cohort stopped half-way leaves an accurate one). `out` is relative to the summary's folder when
it lies inside it. The file is replaced whole each time (atomic_output), never half-written.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from .output_folder import atomic_output

DONE = "done"
ALREADY_DONE = "already_done"
FAILED = "failed"
PENDING = "pending"
FINISHED = (DONE, ALREADY_DONE)

BASE_COLUMNS = ("case_id", "status", "reason", "out", "seconds")


@dataclass
class CaseOutcome:
    """What became of one case: its status, the reason when it failed, its wall time when it ran
    now, and the command's own per-case figures (read back from its results folder)."""

    case_id: str
    out: Path
    status: str = PENDING
    reason: str = ""
    seconds: float | None = None
    facts: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def write_cohort_summary(path, outcomes: list[CaseOutcome], fact_columns=()) -> Path:
    """Write (replace) the summary CSV at `path`, one row per outcome, in the order given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = (*BASE_COLUMNS, *fact_columns)
    with atomic_output(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for o in outcomes:
            writer.writerow({"case_id": o.case_id, "status": o.status, "reason": o.reason,
                             "out": _shown(o.out, path.parent),
                             "seconds": "" if o.seconds is None else f"{o.seconds:.1f}",
                             **{c: _text(o.facts.get(c)) for c in fact_columns}})
    return path


def read_cohort_summary(path) -> list[dict]:
    """The rows of a summary CSV as dicts of text (for merging shards' summaries and for tests)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _shown(out: Path, folder: Path) -> str:
    out, folder = Path(out).absolute(), folder.absolute()
    return os.path.relpath(out, folder) if out.is_relative_to(folder) else str(out)


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
