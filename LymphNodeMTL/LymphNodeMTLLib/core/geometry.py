"""Volume geometry: the one internal convention, and conversions at the boundary.

Inside the Lib every position is in RAS millimetres and every volume is described by a 4x4
IJK->RAS matrix (Slicer's convention). Arrays are indexed [k, j, i] (slice, row, column), which is
what SimpleITK's GetArrayFromImage and Slicer's arrayFromVolume give. File formats and SimpleITK use
LPS; they are converted here, once, and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# LPS <-> RAS flips the first two axes; the matrix is its own inverse.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras_points(points_lps: np.ndarray) -> np.ndarray:
    points = np.asarray(points_lps, dtype=float).reshape(-1, 3).copy()
    points[:, :2] *= -1.0
    return points


ras_to_lps_points = lps_to_ras_points  # the same flip both ways


@dataclass(frozen=True)
class VolumeGeometry:
    """Where a [k, j, i] array sits in patient space.

    Attributes:
        ijk_to_ras: 4x4 matrix mapping (i, j, k, 1) voxel indices to RAS mm.
        shape_kji: array shape (slices, rows, columns).
    """

    ijk_to_ras: np.ndarray
    shape_kji: tuple[int, int, int]

    def __post_init__(self):
        m = np.asarray(self.ijk_to_ras, dtype=float)
        if m.shape != (4, 4) or abs(np.linalg.det(m[:3, :3])) < 1e-12:
            raise ValueError("ijk_to_ras must be an invertible 4x4 matrix")
        object.__setattr__(self, "ijk_to_ras", m)
        object.__setattr__(self, "shape_kji", tuple(int(s) for s in self.shape_kji))

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_lps(cls, origin_lps, spacing, direction_lps, shape_kji) -> "VolumeGeometry":
        """From SimpleITK/ITK/DICOM terms: origin, spacing (i, j, k) and a 3x3 direction in LPS."""
        direction = np.asarray(direction_lps, dtype=float).reshape(3, 3)
        ijk_to_lps = np.eye(4)
        ijk_to_lps[:3, :3] = direction * np.asarray(spacing, dtype=float)[None, :]
        ijk_to_lps[:3, 3] = np.asarray(origin_lps, dtype=float)
        return cls(LPS_TO_RAS @ ijk_to_lps, shape_kji)

    @classmethod
    def from_sitk(cls, image) -> "VolumeGeometry":
        size = image.GetSize()
        return cls.from_lps(image.GetOrigin(), image.GetSpacing(), image.GetDirection(), size[::-1])

    # --- properties ---------------------------------------------------------------------------
    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along i, j, k in mm."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def coarsest_spacing_mm(self) -> float:
        """The largest voxel size, whichever axis it lies on: the slice thickness of a CT stored in
        slices, however its axes are ordered, flipped or tilted."""
        return float(self.spacing.max())

    @property
    def direction_ras(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit i, j, k axes in RAS."""
        return self.ijk_to_ras[:3, :3] / self.spacing[None, :]

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.ijk_to_ras[:3, :3])))

    @property
    def ras_to_ijk(self) -> np.ndarray:
        return np.linalg.inv(self.ijk_to_ras)

    def lps_terms(self) -> tuple[tuple, tuple, tuple]:
        """(origin, spacing, flattened direction) in LPS, as SimpleITK and NRRD headers want them."""
        ijk_to_lps = LPS_TO_RAS @ self.ijk_to_ras
        direction = ijk_to_lps[:3, :3] / self.spacing[None, :]
        return (tuple(ijk_to_lps[:3, 3]), tuple(self.spacing), tuple(direction.flatten()))

    def apply_to_sitk(self, image) -> None:
        origin, spacing, direction = self.lps_terms()
        image.SetOrigin(origin)
        image.SetSpacing(spacing)
        image.SetDirection(direction)

    # --- conversions --------------------------------------------------------------------------
    def ijk_to_ras_points(self, ijk: np.ndarray) -> np.ndarray:
        ijk = np.asarray(ijk, dtype=float).reshape(-1, 3)
        return ijk @ self.ijk_to_ras[:3, :3].T + self.ijk_to_ras[:3, 3]

    def ras_to_ijk_points(self, ras: np.ndarray) -> np.ndarray:
        ras = np.asarray(ras, dtype=float).reshape(-1, 3)
        m = self.ras_to_ijk
        return ras @ m[:3, :3].T + m[:3, 3]

    def contains_ras(self, ras: np.ndarray, margin_voxels: float = 0.5) -> np.ndarray:
        """True for points inside the volume's voxel extent (voxel centres +- half a voxel)."""
        ijk = self.ras_to_ijk_points(ras)
        upper = np.asarray(self.shape_kji[::-1], dtype=float) - 1.0 + margin_voxels
        return np.all((ijk >= -margin_voxels) & (ijk <= upper), axis=1)

    def is_axis_aligned(self, tol: float = 1e-4) -> bool:
        """True when every voxel axis is parallel to an RAS axis (a signed permutation)."""
        d = np.abs(self.direction_ras)
        return bool(np.all((np.abs(d - 1.0) < tol) | (d < tol)))

    def crop(self, start_kji, stop_kji) -> "VolumeGeometry":
        """Geometry of the sub-array [start:stop] along k, j, i."""
        start_ijk = np.asarray(start_kji[::-1], dtype=float)
        m = self.ijk_to_ras.copy()
        m[:3, 3] = self.ijk_to_ras_points(start_ijk)[0]
        return VolumeGeometry(m, tuple(int(b - a) for a, b in zip(start_kji, stop_kji)))

    def same_grid(self, other: "VolumeGeometry", tol: float = 1e-4) -> bool:
        return self.shape_kji == other.shape_kji and np.allclose(
            self.ijk_to_ras, other.ijk_to_ras, atol=tol
        )
