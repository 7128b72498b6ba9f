"""Read and write lymph-node seeds: Slicer markups (.mrk.json) and CSV, always returned in RAS mm.

A seed's id is the radiologist's label for the node. Duplicate ids and seeds outside the CT are
checked by Case.validate_seeds, not here: this module only turns a file into a list of Seeds.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from ..core.case import Seed
from ..core.errors import InputError
from ..core.geometry import lps_to_ras_points, ras_to_lps_points

MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
    "Resources/Schema/markups-schema-v1.0.3.json#"
)
# CSV headers (lower case, stripped) and the coordinate system they mean.
CSV_HEADERS = {("id", "r", "a", "s"): "RAS", ("id", "l", "p", "s"): "LPS"}
_ACCEPTED = "use a 3D Slicer point list (.mrk.json) or a .csv with header id,r,a,s or id,l,p,s"


def read_seeds(path) -> list[Seed]:
    """Read seeds from a .mrk.json (or .json) markups file or a .csv file, in RAS mm."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"seed file not found: {path}; check the path")
    name = path.name.lower()
    if name.endswith(".json"):
        return _read_markups(path)
    if name.endswith(".csv"):
        return _read_csv(path)
    raise InputError(f"unsupported seed file type: {path.name}; {_ACCEPTED}")


def write_markups_json(path, seeds: list[Seed], coordinate_system: str = "LPS") -> None:
    """Write seeds as a Slicer point list (one Fiducial markup; label = node id)."""
    coordinate_system = _check_system(coordinate_system)
    points = _points_in(seeds, coordinate_system)
    control_points = [
        {
            "id": str(n + 1),
            "label": seed.node_id,
            "position": [float(v) for v in point],
            "positionStatus": "defined",
        }
        for n, (seed, point) in enumerate(zip(seeds, points))
    ]
    document = {
        "@schema": MARKUPS_SCHEMA,
        "markups": [
            {
                "type": "Fiducial",
                "coordinateSystem": coordinate_system,
                "coordinateUnits": "mm",
                "controlPoints": control_points,
            }
        ],
    }
    Path(path).write_text(json.dumps(document, indent=2), encoding="utf-8")


# --- markups ----------------------------------------------------------------------------------
def _read_markups(path: Path) -> list[Seed]:
    text = _read_text(path)
    if not text.strip():
        raise InputError(f"seed file {path.name} is empty; place at least one seed and save it")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(
            f"seed file {path.name} is not valid JSON (line {e.lineno}, column {e.colno}: "
            f"{e.msg}); re-save the point list from 3D Slicer"
        ) from None
    markups = document.get("markups") if isinstance(document, dict) else None
    if not isinstance(markups, list):
        raise InputError(
            f"{path.name} is not a 3D Slicer markups file (no 'markups' list); {_ACCEPTED}"
        )
    point_lists = [m for m in markups if isinstance(m, dict) and m.get("type") == "Fiducial"]
    if not point_lists:
        raise InputError(
            f"{path.name} holds no point list (Fiducial markup); place the seeds with a point list"
        )
    seeds = []
    for markup in point_lists:
        seeds.extend(_markup_seeds(path.name, markup, first_number=len(seeds) + 1))
    if not seeds:
        raise InputError(f"seed file {path.name} holds no points; place at least one seed")
    return seeds


def _markup_seeds(name: str, markup: dict, first_number: int) -> list[Seed]:
    """The placed control points of one Fiducial markup, converted to RAS."""
    # Slicer writes LPS by default, so a file without coordinateSystem is LPS.
    system = str(markup.get("coordinateSystem", "LPS")).upper()
    if system not in ("LPS", "RAS"):
        raise InputError(f"{name} has coordinateSystem '{system}'; only LPS and RAS are supported")
    units = markup.get("coordinateUnits", "mm")
    if units != "mm":
        raise InputError(f"{name} has coordinateUnits '{units}'; only mm is supported")
    control_points = markup.get("controlPoints") or []
    if not (isinstance(control_points, list) and all(isinstance(p, dict) for p in control_points)):
        raise InputError(
            f"{name} has malformed controlPoints; re-save the point list from 3D Slicer"
        )
    ids, points = [], []
    for point in control_points:
        # Points not (yet) placed in Slicer carry no meaningful position.
        if point.get("positionStatus", "defined") != "defined":
            continue
        fallback = str(first_number + len(ids))
        node_id = _text(point.get("label")) or _text(point.get("id")) or fallback
        points.append(_markup_position(name, node_id, point.get("position")))
        ids.append(node_id)
    return _seeds(ids, points, system)


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def _markup_position(name: str, node_id: str, position) -> list[float]:
    valid = (
        isinstance(position, list)
        and len(position) == 3
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in position)
        and all(math.isfinite(v) for v in position)
    )
    if not valid:
        raise InputError(
            f"seed {node_id} in {name} has an invalid position {json.dumps(position)}; "
            "expected three numbers in mm"
        )
    return [float(v) for v in position]


# --- CSV --------------------------------------------------------------------------------------
def _read_csv(path: Path) -> list[Seed]:
    try:
        records = list(csv.reader(_read_text(path).splitlines()))
    except csv.Error as e:
        raise InputError(f"seed file {path.name} is not readable CSV ({e}); {_ACCEPTED}") from None
    rows = [(n, _cells(row)) for n, row in enumerate(records, start=1)]
    rows = [(n, cells) for n, cells in rows if cells]
    if not rows:
        raise InputError(f"seed file {path.name} is empty; {_ACCEPTED}")
    _, header = rows[0]
    system = CSV_HEADERS.get(tuple(c.lower() for c in header))
    if system is None:
        raise InputError(
            f"{path.name} has header '{','.join(header)}'; expected exactly id,r,a,s (RAS mm) "
            "or id,l,p,s (LPS mm)"
        )
    if len(rows) == 1:
        raise InputError(
            f"seed file {path.name} holds no points, only a header; add one row per seed"
        )
    ids, points = [], []
    for number, (line, cells) in enumerate(rows[1:], start=1):
        if len(cells) != 4:
            raise InputError(
                f"line {line} of {path.name} has {len(cells)} values; "
                "expected 4 (id and 3 coordinates)"
            )
        ids.append(cells[0] or str(number))
        points.append([_csv_number(path.name, line, c) for c in cells[1:]])
    return _seeds(ids, points, system)


def _cells(row: list[str]) -> list[str]:
    """Stripped cells without trailing empty ones (spreadsheets add trailing commas)."""
    cells = [c.strip() for c in row]
    while cells and not cells[-1]:
        cells.pop()
    return cells


def _csv_number(name: str, line: int, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InputError(
            f"line {line} of {name}: coordinate '{text}' is not a number; use mm values"
        )
    return value


# --- shared -----------------------------------------------------------------------------------
def _read_text(path: Path) -> str:
    # utf-8-sig: spreadsheet programs often prepend a byte-order mark.
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"seed file {path.name} is not UTF-8 text; {_ACCEPTED}") from None


def _seeds(ids: list[str], points: list, system: str) -> list[Seed]:
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    ras = lps_to_ras_points(points) if system == "LPS" else points
    return [Seed(node_id, tuple(float(v) for v in p)) for node_id, p in zip(ids, ras)]


def _points_in(seeds: list[Seed], system: str) -> np.ndarray:
    ras = np.array([s.ras for s in seeds], dtype=float).reshape(-1, 3)
    return ras_to_lps_points(ras) if system == "LPS" else ras


def _check_system(coordinate_system: str) -> str:
    system = coordinate_system.upper()
    if system not in ("LPS", "RAS"):
        raise ValueError(f"coordinate_system must be 'LPS' or 'RAS', not {coordinate_system!r}")
    return system
