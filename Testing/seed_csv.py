"""Seed CSV files for tests: what a user writes by hand for `predict --seeds`, in RAS or LPS."""

from __future__ import annotations

import csv

import numpy as np
from LymphNodeMTLLib.core.case import Seed
from LymphNodeMTLLib.core.geometry import ras_to_lps_points


def write_seeds_csv(path, seeds: list[Seed], coordinate_system: str = "RAS") -> None:
    """Write seeds as CSV with header id,r,a,s (or id,l,p,s for coordinate_system='LPS')."""
    system = coordinate_system.upper()
    if system not in ("LPS", "RAS"):
        raise ValueError(f"coordinate_system must be 'LPS' or 'RAS', not {coordinate_system!r}")
    ras = np.array([s.ras for s in seeds], dtype=float).reshape(-1, 3)
    points = ras_to_lps_points(ras) if system == "LPS" else ras
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "r", "a", "s"] if system == "RAS" else ["id", "l", "p", "s"])
        for seed, point in zip(seeds, points):
            writer.writerow([seed.node_id, *(repr(float(v)) for v in point)])
