"""Cohort manifests: one case per row of a CSV, for a command run over many cases
(`lymphnode-mtl predict --manifest`), and the share of the rows one machine runs (`--shard K/N`).

    case_id,volume,seeds,prompts,out
    p001,ct/p001.nrrd,seeds/p001.mrk.json,,
    p002,dicom/p002/,seeds/p002.csv,prompts/p002.json,second-reader/p002

Which input columns a command reads is its own (`ManifestColumns`); every manifest has `case_id`
(a plain name, unique) and may have `out`. Input paths are relative to the manifest's folder; a
case's results go to `out`, relative to the cohort's results folder, or to `<results>/<case_id>`
when `out` is empty or absent. The manifest is refused as a whole, in one line naming the row,
before any case runs (unknown or missing columns, an empty required cell, a repeated case id, two
cases writing into one folder or one into another's); a missing or unreadable input file is the
case's own failure, found when it runs.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core.errors import InputError

CASE_ID = "case_id"
OUT = "out"


@dataclass(frozen=True)
class ManifestColumns:
    """The columns a command reads from a cohort manifest besides case_id and out.

    required_paths: input files or folders every row names. optional_paths: inputs a row may
    leave empty. optional_text: values passed on as written (e.g. a DICOM series UID).
    check_row: a row's own rule over its values (e.g. "seeds, prompts or both"); returns what is
    wrong, or None.
    """

    required_paths: tuple[str, ...]
    optional_paths: tuple[str, ...] = ()
    optional_text: tuple[str, ...] = ()
    check_row: Callable[[dict], str | None] | None = field(default=None, compare=False)

    @property
    def known(self) -> tuple[str, ...]:
        return (CASE_ID, *self.required_paths, *self.optional_paths, *self.optional_text, OUT)


@dataclass(frozen=True)
class CohortCase:
    """One row of a cohort manifest, its paths resolved.

    inputs: every input column the command reads: absolute paths as text, text columns as
    written, None where the row leaves it empty. row: the row's line number in the manifest.
    """

    case_id: str
    inputs: dict
    out: Path
    row: int


def read_cohort_manifest(path, columns: ManifestColumns, results_dir) -> list[CohortCase]:
    """The cases of a cohort manifest, in row order; raises InputError (one line) for a manifest
    that cannot be run as a whole."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest {path} does not exist or is not a file; give a CSV with one case per row")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError:
        raise InputError(f"manifest {path} is not UTF-8 text; save it as UTF-8 CSV") from None
    except csv.Error as e:
        raise InputError(f"manifest {path} is not a readable CSV ({e})") from None
    _check_header(path, header, columns)
    base, results_dir = path.resolve().parent, Path(results_dir).absolute()
    cases = [_case(path, line, row, columns, base, results_dir) for line, row in rows
             if any((v or "").strip() for v in row.values() if isinstance(v, str))]
    if not cases:
        raise InputError(f"manifest {path} has no case rows; add one row per case under its header")
    _check_unique(path, cases)
    return cases


def _check_header(path: Path, header: list[str], columns: ManifestColumns) -> None:
    names = [h.strip() for h in header]
    unknown = [h for h in names if h not in columns.known]
    if unknown:
        raise InputError(f"manifest {path}: unknown column {unknown[0]!r}; the columns are "
                         f"{', '.join(columns.known)}")
    missing = [c for c in (CASE_ID, *columns.required_paths) if c not in names]
    if missing:
        raise InputError(f"manifest {path} has no {missing[0]!r} column; its header needs "
                         f"{', '.join((CASE_ID, *columns.required_paths))}")
    if len(set(names)) != len(names):
        twice = next(h for h in names if names.count(h) > 1)
        raise InputError(f"manifest {path}: column {twice!r} appears twice; keep one")


def _case(path: Path, line: int, row: dict, columns: ManifestColumns, base: Path,
          results_dir: Path) -> CohortCase:
    values = {(k or "").strip(): (v or "").strip() for k, v in row.items() if isinstance(v, str)}
    where = f"manifest {path} row {line}"
    if None in row:  # more cells than the header has names
        raise InputError(f"{where} has more cells than the header; quote values that hold commas")
    case_id = values.get(CASE_ID, "")
    if not case_id:
        raise InputError(f"{where} has no case_id; give every case a name")
    for name in columns.required_paths:
        if not values.get(name):
            raise InputError(f"{where} ({case_id}) has an empty {name!r}; every case needs one")
    rule = columns.check_row(values) if columns.check_row else None
    if rule:
        raise InputError(f"{where} ({case_id}): {rule}")
    inputs = {name: str(base / values[name]) if values.get(name) else None
              for name in (*columns.required_paths, *columns.optional_paths)}
    inputs.update({name: values.get(name) or None for name in columns.optional_text})
    out_text = values.get(OUT, "")
    if not out_text and (case_id in (".", "..") or any(s in case_id for s in ("/", "\\"))):
        raise InputError(f"{where}: case_id {case_id!r} cannot name its results folder; "
                         "give the row an 'out' folder or a plain case id")
    out = Path(os.path.normpath(results_dir / (out_text or case_id)))
    return CohortCase(case_id, inputs, out, line)


def _check_unique(path: Path, cases: list[CohortCase]) -> None:
    seen: dict[str, CohortCase] = {}
    for case in cases:
        if case.case_id in seen:
            raise InputError(f"manifest {path} row {case.row}: case_id {case.case_id!r} is already "
                             f"used in row {seen[case.case_id].row}; case ids must be unique")
        seen[case.case_id] = case
    by_folder = sorted(cases, key=lambda c: c.out.parts)
    for first, second in zip(by_folder, by_folder[1:]):  # a folder sorts right before those inside it
        if second.out.parts[:len(first.out.parts)] == first.out.parts:
            same = second.out == first.out
            raise InputError(
                f"manifest {path}: cases {first.case_id!r} (row {first.row}) and {second.case_id!r} "
                f"(row {second.row}) would write {'into the same folder' if same else 'one inside the other'} "
                f"{second.out if same else first.out}; give each case its own 'out' folder")


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N), 1 <= K <= N: the K-th of N shares of a manifest."""
    k_text, slash, n_text = str(text).partition("/")
    try:
        k, n = int(k_text), int(n_text)
    except ValueError:
        k = n = 0
    if not slash or n < 1 or not 1 <= k <= n:
        raise InputError(f"--shard {text}: give K/N with 1 <= K <= N, e.g. 1/4 for the first of four "
                         "shares (a SLURM array task: $SLURM_ARRAY_TASK_ID/N with --array=1-N)")
    return k, n


def select_shard(cases: list[CohortCase], k: int, n: int) -> list[CohortCase]:
    """The K-th of N shares: rows K, K+N, K+2N, ... of the manifest (1-based), so the shares
    are disjoint, together the whole manifest, and even in size whatever the order of the rows."""
    return list(cases[k - 1::n])
