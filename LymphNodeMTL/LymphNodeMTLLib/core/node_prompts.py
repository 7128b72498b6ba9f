"""What a radiologist gives for one node besides (or instead of) its seed, in RAS mm.

- a long-axis line: the two ends of the RECIST long axis drawn on the node;
- a box: two opposite corners around the node;
- clicks, in the order given: positive on a part the mask should hold, negative on a part it
  should not (a leak). A click refines the mask the earlier prompts gave.

A node may start from its seed, a line or a box; with a line or a box the engine takes the node's
extent from it (the field of view and where the node is), and the seed, when given too, counts
as a positive click.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .case import Seed
from .errors import InputError
from .geometry import VolumeGeometry

Point = tuple[float, float, float]


@dataclass(frozen=True)
class Click:
    """One click in RAS mm; positive: the point belongs to the node."""

    ras: Point
    positive: bool


@dataclass(frozen=True)
class NodePrompts:
    """One node's prompts in RAS mm (module docstring). `box` is (low corner, high corner)."""

    node_id: str
    seed: Point | None = None
    line: tuple[Point, Point] | None = None
    box: tuple[Point, Point] | None = None
    clicks: tuple[Click, ...] = field(default_factory=tuple)

    @property
    def anchor(self) -> np.ndarray:
        """Where the node is: the middle of its box, else of its line, else its seed."""
        if self.box is not None:
            return np.mean(np.asarray(self.box, dtype=float), axis=0)
        if self.line is not None:
            return np.mean(np.asarray(self.line, dtype=float), axis=0)
        if self.seed is None:
            raise ValueError(f"node {self.node_id} has no seed, line or box")
        return np.asarray(self.seed, dtype=float)

    @property
    def has_extent(self) -> bool:
        """A line or a box gives the node's extent: no field of view is guessed."""
        return self.line is not None or self.box is not None

    @property
    def is_seed_only(self) -> bool:
        return not self.has_extent and not self.clicks

    def as_seed(self) -> Seed:
        """The node's seed for the Case: its own, else its anchor (the middle of its line or box)."""
        point = self.seed if self.seed is not None else self.anchor
        return Seed(self.node_id, tuple(float(v) for v in point))

    def with_click(self, click: Click) -> "NodePrompts":
        return replace(self, clicks=(*self.clicks, click))

    def first_clicks(self, count: int) -> "NodePrompts":
        """The prompts as they stood after the first `count` clicks."""
        return replace(self, clicks=self.clicks[:count])

    def points(self) -> np.ndarray:
        """(K, 3) every point given: seed, line ends, box corners, clicks."""
        points = [self.seed] if self.seed is not None else []
        points += list(self.line or ()) + list(self.box or ()) + [c.ras for c in self.clicks]
        return np.asarray(points, dtype=float).reshape(-1, 3)

    def validate(self, geometry: VolumeGeometry) -> None:
        """Refuse prompts the engine cannot follow truthfully, with one line naming the node."""
        who = f"node {self.node_id}"
        if self.seed is None and not self.has_extent:
            raise InputError(f"{who} has no seed, line or box; give it a seed, a long-axis line or a box")
        points = self.points()
        if not np.all(np.isfinite(points)):
            raise InputError(f"{who} has a prompt coordinate that is not a number; give mm values")
        inside = geometry.contains_ras(points)
        if not np.all(inside):
            p = points[int(np.argmin(inside))]
            raise InputError(f"{who}: the prompt point at RAS ({p[0]:.1f}, {p[1]:.1f}, {p[2]:.1f}) mm is outside "
                             "the CT; check that the prompts belong to this CT and their coordinate system")
        voxel_ras = np.abs(geometry.ijk_to_ras[:3, :3]).max(axis=1)  # one voxel step along R, A, S
        if self.line is not None:
            ends = np.asarray(self.line, dtype=float)
            if np.linalg.norm(ends[1] - ends[0]) < 0.5 * float(geometry.spacing.min()):
                raise InputError(f"{who}: its long-axis line has zero length; draw it from one edge of the "
                                 "node to the other")
        if self.box is not None:
            low, high = np.asarray(self.box, dtype=float)
            thin = np.flatnonzero(high - low < voxel_ras - 1e-6)
            if len(thin):
                axis = "RAS"[int(thin[0])]
                raise InputError(f"{who}: its box is {high[thin[0]] - low[thin[0]]:.2f} mm along {axis}, thinner "
                                 f"than a voxel ({voxel_ras[thin[0]]:.2f} mm); draw the box around the whole node")
        if self.seed is not None:
            seed_ijk = geometry.ras_to_ijk_points(self.seed)[0]
            for c in self.clicks:
                if not c.positive and np.abs(geometry.ras_to_ijk_points(c.ras)[0] - seed_ijk).max() < 0.5:
                    raise InputError(f"{who}: a negative click lies on its seed; a node's seed is part of the "
                                     "node, so move the click or the seed")


def box_from_corners(a, b) -> tuple[Point, Point]:
    """(low, high) corners in RAS from two opposite corners given in either order."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    low, high = np.minimum(a, b), np.maximum(a, b)
    return tuple(float(v) for v in low), tuple(float(v) for v in high)


def merge_seeds_and_prompts(seeds: list[Seed], prompts: dict[str, NodePrompts]):
    """The nodes of a case and their prompts, from a seeds file and a prompts file: the seeds given,
    then, in the prompts' order, every prompted node without a seed there (it takes its prompts'
    seed, else the middle of its line or box). A prompted node with a seed in the seeds file takes
    that seed into its prompts; a node given a different seed in each is refused, since which one
    is meant cannot be told. Returns (seeds, prompts)."""
    out_seeds, out_prompts = list(seeds), {}
    by_id = {s.node_id: s for s in seeds}
    for node_id, p in prompts.items():
        given = by_id.get(node_id)
        if given is None:
            if p.seed is None and not p.has_extent:
                raise InputError(f"node {node_id} has prompts but no seed, line or box; give it a seed in the "
                                 "seeds file or the prompts file, a line or a box")
            out_seeds.append(p.as_seed())
        elif p.seed is None:
            p = replace(p, seed=tuple(float(v) for v in given.ras))
        elif not np.allclose(given.ras, p.seed, atol=1e-3):
            raise InputError(f"node {node_id} has one seed in the seeds file and another in the prompts file; "
                             "give its seed in one of them")
        out_prompts[node_id] = p
    return out_seeds, out_prompts
