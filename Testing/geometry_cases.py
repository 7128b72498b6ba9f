"""Test volumes: one physical sphere, encoded with many geometries (LPS/RAS, flips, permuted,
oblique, anisotropic). Each encoding is built from LPS terms, exactly as a file would store it."""

from __future__ import annotations

import numpy as np
from LymphNodeMTLLib.core.geometry import VolumeGeometry
from scipy.spatial.transform import Rotation

SPHERE_CENTRE_RAS = np.array([12.3, -40.7, 101.0])
SPHERE_RADIUS_MM = 8.0
FAT_HU, NODE_HU = -100.0, 45.0


def _lattice(spacing, shape_ijk, direction_lps, centre_ras=SPHERE_CENTRE_RAS, offset_vox=(0.0, 0.0, 0.0)):
    """Geometry whose voxel (shape-1)/2 + offset lies on `centre_ras`."""
    direction = np.asarray(direction_lps, float).reshape(3, 3)
    spacing = np.asarray(spacing, float)
    centre_lps = centre_ras * np.array([-1, -1, 1])
    mid = (np.asarray(shape_ijk) - 1) / 2.0 + np.asarray(offset_vox)
    origin = centre_lps - direction @ (spacing * mid)
    return VolumeGeometry.from_lps(origin, spacing, direction.flatten(), tuple(shape_ijk[::-1]))


def lattice_around(centre_ras, spacing, direction_lps, half_extent_mm: float) -> VolumeGeometry:
    """A lattice whose middle voxel lies on `centre_ras` and that covers a ball of half_extent_mm."""
    shape_ijk = (2 * np.ceil(half_extent_mm / np.asarray(spacing, float)) + 1).astype(int)
    return _lattice(spacing, shape_ijk, direction_lps, centre_ras=np.asarray(centre_ras, float))


def same_lattice_encodings() -> dict[str, VolumeGeometry]:
    """Four encodings of one voxel lattice: the voxel centres are the same physical points."""
    spacing, shape = (0.8, 0.7, 1.0), (41, 47, 33)
    base = _lattice(spacing, shape, np.eye(3), offset_vox=(0.3, -0.2, 0.4))
    out = {"lps_axial": base}
    m = base.ijk_to_ras
    n_i, n_j, n_k = shape

    def reindex(flip_axes=(), perm=(0, 1, 2)):
        # new ijk -> old ijk: permute then flip; ijk_to_ras composes accordingly
        t = np.eye(4)
        t = t[:, list(perm) + [3]] if perm != (0, 1, 2) else t
        sizes = [shape[p] for p in perm]
        f = np.eye(4)
        for ax in flip_axes:
            f[ax, ax] = -1.0
            f[ax, 3] = sizes[ax] - 1
        new = m @ t @ f
        return VolumeGeometry(new, tuple(sizes[::-1]))

    out["ras_axial"] = reindex(flip_axes=(0, 1))  # i runs towards R, j towards A
    out["flipped_k"] = reindex(flip_axes=(2,))
    out["permuted_sagittal"] = reindex(flip_axes=(1,), perm=(1, 2, 0))
    return out


def other_lattice_encodings() -> dict[str, VolumeGeometry]:
    """Different lattices: oblique rotation and thick-slice anisotropy (0.6 x 0.6 x 5 mm)."""
    rot = Rotation.from_euler("xyz", [25, -15, 35], degrees=True).as_matrix()
    return {
        "oblique": _lattice((0.9, 0.8, 1.1), (45, 49, 41), rot, offset_vox=(0.25, 0.1, -0.3)),
        "thick_slices": _lattice((0.6, 0.6, 5.0), (71, 67, 9), np.eye(3), offset_vox=(0.2, -0.4, 0.0)),
    }


def voxel_centres_ras(geometry: VolumeGeometry) -> np.ndarray:
    """(K, J, I, 3) RAS coordinates of every voxel centre."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in geometry.shape_kji], indexing="ij")
    ijk = np.stack([i, j, k], axis=-1).reshape(-1, 3)
    return geometry.ijk_to_ras_points(ijk).reshape(*geometry.shape_kji, 3)


def sphere_distance(geometry: VolumeGeometry) -> np.ndarray:
    return np.linalg.norm(voxel_centres_ras(geometry) - SPHERE_CENTRE_RAS, axis=-1)


def sphere_volume(geometry: VolumeGeometry):
    """(image HU, true mask) of the sphere in fat, rendered at voxel centres."""
    mask = sphere_distance(geometry) <= SPHERE_RADIUS_MM
    image = np.where(mask, NODE_HU, FAT_HU).astype(np.float32)
    return image, mask
