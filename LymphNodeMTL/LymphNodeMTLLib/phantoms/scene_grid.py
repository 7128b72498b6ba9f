"""A phantom's voxel grid in patient space, and the RAS positions of its voxels.

Anatomy is built in patient space (RAS mm) and sampled through the grid's exact ijk->RAS matrix, so
oblique, flipped or permuted grids show the same anatomy, and every truth position is exact.
"""

from __future__ import annotations

import numpy as np

from ..core.geometry import VolumeGeometry, ras_to_lps_points
from .node_renderer import random_rotation


def random_direction(rng: np.random.Generator) -> np.ndarray:
    """A 3x3 LPS direction: axial identity (60%), flipped (15%), permuted (10%), oblique (15%)."""
    u = rng.random()
    if u < 0.60:
        return np.eye(3)
    if u < 0.75:
        signs = rng.choice([-1.0, 1.0], 3)
        if np.all(signs > 0):
            signs[rng.integers(3)] = -1.0
        return np.diag(signs)
    if u < 0.85:
        # Sagittal or coronal slices: the slice axis runs along R-L or A-P.
        permutation = [(1, 2, 0), (0, 2, 1), (2, 0, 1)][rng.integers(3)]
        return np.eye(3)[:, permutation] * rng.choice([-1.0, 1.0], 3)[None, :]
    return random_rotation(rng)


def grid_around(centre_ras, field_of_view_mm, spacing, direction_lps) -> VolumeGeometry:
    """A grid covering `field_of_view_mm` ((i, j, k) mm, at least one voxel per axis) whose centre
    voxel position is `centre_ras`; `spacing` is (i, j, k) mm, `direction_lps` a 3x3 LPS matrix."""
    shape_ijk = np.maximum(1, np.round(np.asarray(field_of_view_mm) / np.asarray(spacing))).astype(int)
    direction = np.asarray(direction_lps, dtype=float).reshape(3, 3)
    half = np.asarray(spacing, dtype=float) * (shape_ijk - 1) / 2.0
    origin_lps = ras_to_lps_points(centre_ras)[0] - direction @ half
    return VolumeGeometry.from_lps(origin_lps, spacing, direction, tuple(shape_ijk[::-1]))


def grid_centre_ras(geometry: VolumeGeometry) -> np.ndarray:
    """RAS position of the grid's centre (a voxel centre for odd sizes)."""
    return geometry.ijk_to_ras_points((np.asarray(geometry.shape_kji[::-1]) - 1) / 2.0)[0]


def ras_components(geometry: VolumeGeometry, start_kji, stop_kji, origin_ras):
    """R, A, S (float32, (K, J, I)) of the voxel centres in a box, relative to `origin_ras`."""
    k, j, i = (np.arange(a, b, dtype=np.float32) for a, b in zip(start_kji, stop_kji))
    k, j, i = k[:, None, None], j[None, :, None], i[None, None, :]
    m = geometry.ijk_to_ras.astype(np.float32)
    offset = (geometry.ijk_to_ras[:3, 3] - origin_ras).astype(np.float32)
    return tuple(m[row, 0] * i + m[row, 1] * j + m[row, 2] * k + offset[row] for row in range(3))


def voxel_box(geometry: VolumeGeometry, low_ras, high_ras):
    """Voxel box (start_kji, stop_kji) covering an axis-aligned RAS box, clipped to the grid."""
    corners = np.array(np.meshgrid(*zip(low_ras, high_ras), indexing="ij")).reshape(3, -1).T
    ijk = geometry.ras_to_ijk_points(corners)
    start = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)[::-1]
    stop = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, geometry.shape_kji[::-1])[::-1]
    return tuple(start.tolist()), tuple(np.maximum(stop, start).tolist())


def box_slices(start_kji, stop_kji) -> tuple[slice, slice, slice]:
    """The index of a half-open voxel box [start, stop)."""
    return tuple(slice(int(a), int(b)) for a, b in zip(start_kji, stop_kji))
