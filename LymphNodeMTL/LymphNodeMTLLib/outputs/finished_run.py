"""Whether a folder holds a finished run: the question a resumed cohort asks before it skips a case.

A run publishes its files and its run.json together (output_folder.py), so a run.json that reads
as JSON and lists the files asked for, each of them present, is a run that finished; a run killed
half-way leaves none of it. Whether it is *this* case's run (the same model, the same inputs) is
the caller's comparison of the record's fields.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .run_record import RECORD_NAME


def finished_record(folder, outputs) -> dict | None:
    """The folder's run record when it records a finished run that wrote every name of `outputs`
    (all present in the folder); None otherwise (no record, unreadable, or a file missing)."""
    folder = Path(folder)
    try:
        record = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    listed = record.get("outputs") if isinstance(record, dict) else None
    if not isinstance(listed, list):
        return None
    if not all(name in listed and os.path.lexists(folder / name) for name in outputs):
        return None
    return record
