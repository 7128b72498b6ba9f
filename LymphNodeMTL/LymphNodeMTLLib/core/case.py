"""The engine's input: a CT as an array with its exact geometry, and the radiologist's seeds."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .geometry import VolumeGeometry


@dataclass(frozen=True)
class Seed:
    """One click on one lymph node. `node_id` is the radiologist's label for the node."""

    node_id: str
    ras: tuple[float, float, float]


@dataclass
class Case:
    """A CT (HU, array indexed [k, j, i]) plus geometry, seeds and identifiers carried to outputs."""

    image: np.ndarray
    geometry: VolumeGeometry
    seeds: list[Seed] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    # the seed ids, positions and grid validate_seeds last accepted
    _accepted_seeds: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.image.ndim != 3:
            raise InputError(
                f"the CT must be a 3-D volume, got {self.image.ndim}-D; load a single CT series"
            )
        if min(self.image.shape) < 2:
            raise InputError(
                f"the CT has a single slice along one axis (size {self.image.shape[::-1]}); "
                "load the whole 3-D series, not one image"
            )
        if tuple(self.image.shape) != tuple(self.geometry.shape_kji):
            raise ValueError("image shape and geometry shape differ")

    def seed_array(self) -> np.ndarray:
        return np.array([s.ras for s in self.seeds], dtype=float).reshape(-1, 3)

    def validate(self, name: str | None = None, warn=None) -> None:
        """Refuse a case the engine cannot answer truthfully: a CT that is not a plausible CT in HU
        (core/ct_plausibility.py; non-finite voxels outside the body become air), then seeds it
        cannot place (`validate_seeds`). The DICOM Modality in the metadata is checked when given.

        Args:
            name: how messages call the CT (default: metadata "volume", else "the CT").
            warn: receives each warning line (default: printed on stderr).
        """
        self.validate_image(name, warn)
        self.validate_seeds()

    def validate_image(self, name: str | None = None, warn=None) -> None:
        """The CT half of `validate`: a plausible CT in HU, non-finite voxels outside the body as air."""
        from .ct_plausibility import check_ct_plausibility, stderr_warning

        name = name or str(self.metadata.get("volume") or "the CT")
        self.image = check_ct_plausibility(self.image, self.geometry, self.metadata.get("Modality"),
                                           name, warn or stderr_warning)

    def validate_seeds(self) -> None:
        """Refuse seed sets the engine cannot place: empty, duplicate ids, outside the CT, two seeds
        at one position.

        The check runs once per seed set: a call on seeds and a grid already accepted returns at
        once, so the engine may call it on every Case it gets and a Case validated where it entered
        the process (a reader, the server's submit) is not checked again. Changed seeds or another
        grid are checked anew."""
        if self._accepted_seeds is not None and self._same_seeds(self._accepted_seeds):
            return
        if not self.seeds:
            raise InputError("no seeds given; place at least one seed on a lymph node")
        ids = [s.node_id for s in self.seeds]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise InputError(
                f"duplicate seed id(s) {', '.join(duplicates)}; give every node its own id"
            )
        inside = self.geometry.contains_ras(self.seed_array())
        if not np.all(inside):
            bad = [s for s, ok in zip(self.seeds, inside) if not ok]
            s = bad[0]
            raise InputError(
                f"seed {s.node_id} at RAS ({s.ras[0]:.1f}, {s.ras[1]:.1f}, {s.ras[2]:.1f}) mm is "
                "outside the CT volume; check that the seeds belong to this CT and their "
                "coordinate system (RAS vs LPS)"
            )
        self._refuse_shared_voxels()
        self._accepted_seeds = (tuple(s.node_id for s in self.seeds), self.seed_array(), self.geometry)

    def _same_seeds(self, accepted: tuple) -> bool:
        ids, points, geometry = accepted
        return (geometry is self.geometry and ids == tuple(s.node_id for s in self.seeds)
                and np.array_equal(points, self.seed_array()))

    def _refuse_shared_voxels(self) -> None:
        """Two seeds less than half a voxel apart along every axis are one point: the second would
        get an empty mask and still a probability. Each node needs exactly one seed."""
        ijk = self.geometry.ras_to_ijk_points(self.seed_array())
        for n in range(1, len(ijk)):
            close = np.flatnonzero(np.abs(ijk[:n] - ijk[n]).max(axis=1) < 0.5)
            if close.size:
                other, seed = self.seeds[int(close[0])], self.seeds[n]
                raise InputError(
                    f"seeds {other.node_id} and {seed.node_id} are at the same position (RAS "
                    f"{seed.ras[0]:.1f}, {seed.ras[1]:.1f}, {seed.ras[2]:.1f} mm, within half a "
                    "voxel); a node needs exactly one seed, so remove one of them"
                )
