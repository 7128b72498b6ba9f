"""A phantom's surroundings while they are drawn: HU and a tissue class per voxel, painted in patient space.

The spec's world and the wide world paint their synthetic bodies with these strokes (elliptic
cylinders along S, solids in a box of patient coordinates, straight tubes through the volume, smooth
texture) and read a real CT into the same tissue classes (real_background.py), so node placement and
the scanner meet one kind of scene whichever body lies under the nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.geometry import VolumeGeometry
from .scene_grid import box_slices, grid_centre_ras, ras_components, voxel_box

# Tissue classes. The spec's body uses the first five (SOFT_TISSUE: its wall and organs); the wide
# world adds the rest. PARTIAL_VOLUME: a real CT's voxels between fat and soft tissue.
AIR, FAT, SOFT_TISSUE, VESSEL, LUNG, MUSCLE, BOWEL_WALL, LUMEN, BONE, PARTIAL_VOLUME = range(10)
AIR_HU = -1000.0


@dataclass
class TissueScene:
    """HU (float32, [k, j, i], before blur and noise) and tissue classes (uint8) on a grid.

    `original` is a real CT as read, kept so that the scanner adds only the nodes' change to it;
    None for a synthetic body.
    """

    hu: np.ndarray
    tissue: np.ndarray
    geometry: VolumeGeometry
    original: np.ndarray | None = None

    @classmethod
    def empty(cls, geometry: VolumeGeometry) -> TissueScene:
        """A grid of air, to paint a synthetic body into."""
        shape = geometry.shape_kji
        return cls(np.full(shape, AIR_HU, dtype=np.float32), np.full(shape, AIR, dtype=np.uint8), geometry)

    @property
    def centre_ras(self) -> np.ndarray:
        return grid_centre_ras(self.geometry)

    def axial_coordinates(self):
        """R and A (float32, (K, J, I)) of every voxel centre relative to the grid's centre: the
        coordinates in which a body's cross-section (elliptic cylinders along S) is drawn."""
        r, a, _ = ras_components(self.geometry, (0, 0, 0), self.geometry.shape_kji, self.centre_ras)
        return r, a

    def local_coordinates(self, low_ras, high_ras, origin_ras):
        """(voxel box, (R, A, S)) of the voxels covering an axis-aligned RAS box, relative to
        `origin_ras`: the frame in which a solid of that extent is drawn."""
        start, stop = voxel_box(self.geometry, low_ras, high_ras)
        return box_slices(start, stop), ras_components(self.geometry, start, stop, origin_ras)

    def straight_tube(self, point, axis, radius: float):
        """A straight tube of `radius` mm through `point` (RAS) along unit `axis`, crossing the
        whole volume: (the voxel box it touches, the tube's voxels in that box)."""
        reach = float(np.linalg.norm(self.geometry.spacing * np.asarray(self.geometry.shape_kji[::-1])))
        ends = np.array([point - reach * axis, point + reach * axis])
        box, (r, a, s) = self.local_coordinates(ends.min(axis=0) - radius, ends.max(axis=0) + radius, point)
        ur, ua, us = (float(x) for x in axis)
        along = r * ur + a * ua + s * us
        return box, r**2 + a**2 + s**2 - along**2 <= radius**2

    def paint(self, where, tissue_class: int, value, box=None) -> None:
        """Give the voxels `where` (within `box`, the whole grid by default) a class and an HU."""
        hu, tissue = (self.hu, self.tissue) if box is None else (self.hu[box], self.tissue[box])
        tissue[where] = tissue_class
        hu[where] = value

    def add_texture(self, rng: np.random.Generator, amplitude_hu_by_class, correlation_mm: float) -> None:
        """Add smooth unit-SD noise, scaled per tissue class by `amplitude_hu_by_class` (float32)."""
        texture = smooth_noise(rng, self.geometry.shape_kji, self.geometry.spacing[::-1], correlation_mm)
        self.hu += amplitude_hu_by_class[self.tissue] * texture


def in_ellipse(r, a, centre_ra, axes):
    """Voxels of an elliptic cylinder along S: (R, A) within the ellipse of `axes` mm around `centre_ra`."""
    # Python floats keep the float32 coordinates in float32 (numpy scalars would promote).
    (r0, a0), (ar, aa) = (float(c) for c in centre_ra), (float(x) for x in axes)
    return ((r - r0) / ar) ** 2 + ((a - a0) / aa) ** 2 <= 1.0


def cranio_caudal_axis(rng: np.random.Generator, any_direction_share: float) -> np.ndarray:
    """A vessel's unit axis: within 25 degrees of S, or any direction for `any_direction_share` of them."""
    if rng.random() < any_direction_share:
        axis = rng.normal(size=3)
    else:
        tilt, turn = rng.uniform(0.0, np.deg2rad(25.0)), rng.uniform(0.0, 2.0 * np.pi)
        axis = np.array([np.sin(tilt) * np.cos(turn), np.sin(tilt) * np.sin(turn), np.cos(tilt)])
    return axis / np.linalg.norm(axis)


def smooth_noise(rng, shape_kji, spacing_kji, correlation_mm: float) -> np.ndarray:
    """Unit-SD smooth noise: Gaussian values on a coarse lattice, linearly interpolated.

    Interpolation is separable (one small matrix per axis), which is far cheaper than filtering
    a full-resolution white-noise volume.
    """
    coarse_shape = [
        int(np.ceil(n * s / correlation_mm)) + 2 for n, s in zip(shape_kji, spacing_kji)
    ]
    field = rng.standard_normal(coarse_shape).astype(np.float32)
    for axis, (n, m) in enumerate(zip(shape_kji, coarse_shape)):
        weights = _linear_interpolation_matrix(n, m, rng.uniform(0.0, 1.0))
        field = np.moveaxis(np.tensordot(weights, field, axes=([1], [axis])), 0, axis)
    return field / max(float(field.std()), 1e-6)


def _linear_interpolation_matrix(n_out: int, n_in: int, shift: float) -> np.ndarray:
    """(n_out, n_in) weights resampling n_in lattice values onto n_out points spread over them."""
    position = shift + np.arange(n_out) * (n_in - 2) / max(n_out, 1)
    low = np.floor(position).astype(int)
    frac = (position - low).astype(np.float32)
    weights = np.zeros((n_out, n_in), dtype=np.float32)
    weights[np.arange(n_out), low] = 1.0 - frac
    weights[np.arange(n_out), low + 1] = frac
    return weights
