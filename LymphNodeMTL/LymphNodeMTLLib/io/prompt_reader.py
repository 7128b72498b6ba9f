"""Prompts files: per node, its seed, long-axis line, box and clicks, read into RAS mm (and the same
document written back, the form the server's refine jobs carry).

    {"coordinate_system": "RAS",
     "nodes": {"N01": {"seed": [r, a, s], "line": [[r, a, s], [r, a, s]],
                       "box": [[r, a, s], [r, a, s]],
                       "clicks": [{"point": [r, a, s], "positive": false}, ...]}}}

Every key of a node is optional; clicks keep their order (each refines the mask the prompts before
it gave). A box is [low corner, high corner] in the file's coordinate system. Whether the points
lie in the CT is checked against the CT (NodePrompts.validate), not here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..core.geometry import lps_to_ras_points, ras_to_lps_points
from ..core.node_prompts import Click, NodePrompts, box_from_corners

NODE_KEYS = ("seed", "line", "box", "clicks")
DOCUMENT_KEYS = ("coordinate_system", "nodes")
MAX_CLICKS = 100  # per node: each click is one network pass on every request


def read_prompts(path) -> dict[str, NodePrompts]:
    """Node id -> its prompts, in RAS mm, in the file's order."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompts file not found: {path}; check the path")
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=_refuse_repeated_keys)
    except UnicodeDecodeError:
        raise InputError(f"prompts file {path.name} is not UTF-8 text; save it as UTF-8 JSON") from None
    except json.JSONDecodeError as e:
        raise InputError(f"prompts file {path.name} is not valid JSON (line {e.lineno}, column {e.colno}: "
                         f"{e.msg})") from None
    return prompts_from_document(document, path.name)


def prompts_from_document(document, name: str = "the prompts") -> dict[str, NodePrompts]:
    """read_prompts on an already parsed JSON document (also the server's request body)."""
    if not isinstance(document, dict) or not isinstance(document.get("nodes"), dict):
        raise InputError(f'{name} needs a "nodes" object of node id -> prompts; see the README')
    unknown = sorted(set(document) - set(DOCUMENT_KEYS))
    if unknown:
        raise InputError(f"{name} has unknown key(s) {', '.join(unknown)}; it takes {', '.join(DOCUMENT_KEYS)}")
    system = document.get("coordinate_system")
    if not isinstance(system, str) or system.upper() not in ("RAS", "LPS"):
        raise InputError(f'{name} must say "coordinate_system": "RAS" or "LPS" (got {json.dumps(system)})')
    system = system.upper()
    if not document["nodes"]:
        raise InputError(f"{name} lists no nodes; give at least one node's prompts")
    return {str(node_id): _node(name, str(node_id), given, system) for node_id, given in document["nodes"].items()}


def _node(name: str, node_id: str, given, system: str) -> NodePrompts:
    who = f"node {node_id} in {name}"
    if not node_id.strip():
        raise InputError(f"{name} has a node with an empty id; give every node an id")
    if not isinstance(given, dict):
        raise InputError(f"{who} must be an object with seed, line, box and/or clicks")
    unknown = sorted(set(given) - set(NODE_KEYS))
    if unknown:
        raise InputError(f"{who} has unknown key(s) {', '.join(unknown)}; use {', '.join(NODE_KEYS)}")
    seed = _points(who, "seed", given["seed"], 1, system)[0] if given.get("seed") is not None else None
    line = _points(who, "line", given["line"], 2, system) if given.get("line") is not None else None
    box = None
    if given.get("box") is not None:
        low, high = _points(who, "box", given["box"], 2, system, convert=False)
        if any(a > b for a, b in zip(low, high)):
            raise InputError(f"{who}: its box is inverted ({system} {list(low)} to {list(high)}); give the low "
                             "corner first, then the high corner")
        box = box_from_corners(*_to_ras(np.array([low, high]), system))
    clicks = given.get("clicks") or []
    if not isinstance(clicks, list):
        raise InputError(f"{who}: clicks must be a list of {{\"point\": [x, y, z], \"positive\": true|false}}")
    if len(clicks) > MAX_CLICKS:
        raise InputError(f"{who} has {len(clicks)} clicks; at most {MAX_CLICKS} are followed, so keep the last ones "
                         "that matter or draw a box")
    parsed = []
    for n, click in enumerate(clicks, start=1):
        if not isinstance(click, dict) or not isinstance(click.get("positive"), bool) or "point" not in click:
            raise InputError(f"{who}: click {n} must be {{\"point\": [x, y, z], \"positive\": true|false}}")
        parsed.append(Click(_points(who, f"click {n}", click["point"], 1, system)[0], click["positive"]))
    return NodePrompts(node_id, seed, None if line is None else (line[0], line[1]), box, tuple(parsed))


def _points(who: str, what: str, value, count: int, system: str, convert: bool = True) -> list[tuple]:
    points = [value] if count == 1 else value
    valid = (isinstance(points, list) and len(points) == count
             and all(isinstance(p, list) and len(p) == 3 and all(_number(v) for v in p) for p in points))
    if not valid:
        shape = "[x, y, z]" if count == 1 else "[[x, y, z], [x, y, z]]"
        raise InputError(f"{who}: {what} must be {shape} in mm, got {json.dumps(value)}")
    array = np.asarray(points, dtype=float)
    if convert:
        array = _to_ras(array, system)
    return [tuple(float(v) for v in p) for p in array]


def _to_ras(points: np.ndarray, system: str) -> np.ndarray:
    return lps_to_ras_points(points) if system == "LPS" else points


def _refuse_repeated_keys(pairs):
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise InputError(f"the prompts file gives {', '.join(repeated)} more than once; give each node (and key) once")
    return dict(pairs)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def prompts_document(prompts, coordinate_system: str = "RAS") -> dict:
    """The JSON document of NodePrompts (read_prompts' format; a box as [low, high] corners)."""
    system = coordinate_system.upper()
    if system not in ("RAS", "LPS"):
        raise ValueError(f"coordinate_system must be 'RAS' or 'LPS', not {coordinate_system!r}")

    def out(points):
        array = np.asarray(points, dtype=float).reshape(-1, 3)
        return (ras_to_lps_points(array) if system == "LPS" else array).tolist()

    nodes = {}
    for p in prompts:
        node = {}
        if p.seed is not None:
            node["seed"] = out(p.seed)[0]
        if p.line is not None:
            node["line"] = out(p.line)
        if p.box is not None:
            corners = np.asarray(out(p.box))
            node["box"] = [corners.min(axis=0).tolist(), corners.max(axis=0).tolist()]
        if p.clicks:
            node["clicks"] = [{"point": out(c.ras)[0], "positive": bool(c.positive)} for c in p.clicks]
        nodes[p.node_id] = node
    return {"coordinate_system": system, "nodes": nodes}
