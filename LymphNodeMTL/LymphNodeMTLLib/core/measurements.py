"""Per-node measurements: volume, RECIST short and long axis in the axial plane, HU statistics.

RECIST axes are measured on axial (constant-S) planes whatever the CT's orientation: an
axis-aligned CT is only transposed into (S, A, R) order; an oblique one is resampled onto an
RAS-aligned grid at its finest spacing first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from .geometry import VolumeGeometry


@dataclass
class AxialDiameters:
    long_axis_mm: float = 0.0
    short_axis_mm: float = 0.0
    long_slice_s_mm: float = float("nan")  # S coordinate of the slice holding the long axis
    short_slice_s_mm: float = float("nan")
    # the calipers on the short axis' slice, endpoints (2, 3) in RAS mm: what a report draws
    short_axis_ras: np.ndarray | None = None
    short_slice_long_ras: np.ndarray | None = None  # that slice's longest chord
    long_axis_ras: np.ndarray | None = None  # the long axis itself: what a radiologist draws for RECIST


@dataclass
class SarMask:
    """A node mask indexed (S, A, R), and where its voxels sit in RAS.

    Attributes:
        mask: bool array, axes (S, A, R).
        spacing: voxel size along (S, A, R) in mm.
        origin_ras: RAS of voxel (0, 0, 0).
        columns: 3x3; column n is the RAS step of one voxel along array axis n (S, A or R, possibly
            running towards -S, -A or -R).
    """

    mask: np.ndarray
    spacing: np.ndarray
    origin_ras: np.ndarray
    columns: np.ndarray

    @property
    def s_coords(self) -> np.ndarray:
        """S coordinate (mm) of each axial plane."""
        return self.origin_ras[2] + self.columns[2, 0] * np.arange(self.mask.shape[0])

    def to_ras(self, z: int, points_ar_mm: np.ndarray) -> np.ndarray:
        """RAS of (a, r) points in array millimetres on plane z."""
        index = points_ar_mm / self.spacing[1:]
        return (self.origin_ras + z * self.columns[:, 0]
                + index[:, :1] * self.columns[:, 1] + index[:, 1:] * self.columns[:, 2])


def mask_in_sar_order(mask: np.ndarray, geometry: VolumeGeometry, start_kji) -> SarMask:
    """The mask in (S, A, R) order. Exact (a transpose, no interpolation) for axis-aligned CTs."""
    sub_geom = geometry.crop(start_kji, np.add(start_kji, mask.shape))
    if geometry.is_axis_aligned():
        ras_axis_of_ijk = np.argmax(np.abs(sub_geom.direction_ras), axis=0)
        # array axes are (k, j, i) = 2 - ijk; target order is (S=2, A=1, R=0)
        array_axis_of_ras = {int(ras_axis_of_ijk[ijk]): 2 - ijk for ijk in range(3)}
        order = [array_axis_of_ras[2], array_axis_of_ras[1], array_axis_of_ras[0]]
        columns = np.stack([sub_geom.ijk_to_ras[:3, 2 - order[n]] for n in range(3)], axis=1)
        return SarMask(np.transpose(mask, order), np.linalg.norm(columns, axis=0),
                       sub_geom.ijk_to_ras[:3, 3].copy(), columns)
    return _resample_to_sar(mask, sub_geom)


def _resample_to_sar(mask: np.ndarray, geometry: VolumeGeometry) -> SarMask:
    # smooth, then sample at half the finest spacing: re-binarising an oblique staircase on a
    # coarse grid would add a second pixel of digitisation error
    step = float(geometry.spacing.min()) / 2.0
    shape_ijk = np.asarray(mask.shape[::-1])
    corners = np.array(
        [[x, y, z] for x in (-0.5, shape_ijk[0] - 0.5) for y in (-0.5, shape_ijk[1] - 0.5)
         for z in (-0.5, shape_ijk[2] - 0.5)]
    )
    ras = geometry.ijk_to_ras_points(corners)
    lo, hi = ras.min(axis=0), ras.max(axis=0)
    axes = [np.arange(lo[d] + step / 2, hi[d], step) for d in range(3)]
    s, a, r = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    ijk = geometry.ras_to_ijk_points(np.stack([r, a, s], axis=-1).reshape(-1, 3))
    coords = ijk[:, ::-1].T  # map_coordinates wants (k, j, i)
    smooth = ndimage.gaussian_filter(np.pad(mask.astype(np.float32), 2), 0.7)
    sampled = ndimage.map_coordinates(smooth, coords + 2.0, order=1, cval=0.0)
    origin = np.array([axes[0][0], axes[1][0], axes[2][0]])
    columns = np.array([[0.0, 0.0, step], [0.0, step, 0.0], [step, 0.0, 0.0]])  # S, A, R
    return SarMask(sampled.reshape(s.shape) > 0.5, np.array([step, step, step]), origin, columns)


def boundary_points(mask2d: np.ndarray, spacing_ar: np.ndarray, sigma_px: float = 0.7) -> np.ndarray:
    """Sub-pixel outline of a 2-D mask, in mm.

    The max chord of raw pixel edges is biased up by about a pixel (it picks the staircase's
    outermost steps). The mask is lightly smoothed and its 0.5 level found by linear
    interpolation between neighbouring pixels, which averages the staircase out. Tiny masks that
    vanish under smoothing fall back to the pixel-edge midpoints.
    """
    padded = np.pad(mask2d.astype(float), 3)
    field = ndimage.gaussian_filter(padded, sigma_px)
    points = []
    for axis in (0, 1):
        v0 = field.take(np.arange(field.shape[axis] - 1), axis=axis)
        v1 = field.take(np.arange(1, field.shape[axis]), axis=axis)
        cross = (v0 >= 0.5) != (v1 >= 0.5)
        idx = np.argwhere(cross).astype(float)
        t = (0.5 - v0[cross]) / (v1[cross] - v0[cross])
        idx[:, axis] += t
        points.append(idx)
    points = np.concatenate(points)
    if len(points) < 3:
        points = _pixel_edge_midpoints(np.pad(mask2d, 3))
    return (points - 3.0) * spacing_ar


def _pixel_edge_midpoints(mask2d: np.ndarray) -> np.ndarray:
    points = []
    for axis in (0, 1):
        for step in (1, -1):
            outside = ~np.roll(mask2d, -step, axis=axis)
            edge = np.argwhere(mask2d & outside).astype(float)
            edge[:, axis] += 0.5 * step
            points.append(edge)
    return np.concatenate(points)


@dataclass
class Caliper:
    """RECIST calipers on one axial outline: endpoints as (2, 2) arrays of (a, r) mm."""

    long_ends: np.ndarray
    short_ends: np.ndarray

    @property
    def long_mm(self) -> float:
        return float(np.linalg.norm(self.long_ends[1] - self.long_ends[0]))

    @property
    def short_mm(self) -> float:
        return float(np.linalg.norm(self.short_ends[1] - self.short_ends[0]))


def feret_caliper(points: np.ndarray) -> Caliper:
    """Longest chord of a 2-D outline, and its extent perpendicular to that chord drawn through the
    middle of that extent along the chord."""
    try:
        hull = points[ConvexHull(points).vertices]
    except (QhullError, ValueError):
        hull = points  # collinear or tiny: brute force over all points
    d2 = ((hull[:, None, :] - hull[None, :, :]) ** 2).sum(-1)
    a, b = np.unravel_index(int(np.argmax(d2)), d2.shape)
    p, q = hull[a], hull[b]
    u = (q - p) / max(float(np.linalg.norm(q - p)), 1e-9)
    v = np.array([-u[1], u[0]])
    along, across = points @ u, points @ v
    low, high = int(np.argmin(across)), int(np.argmax(across))
    middle = (along[low] + along[high]) / 2.0
    short = np.array([middle * u + across[low] * v, middle * u + across[high] * v])
    return Caliper(np.array([p, q]), short)


def _better(value, s_mm, best, best_s) -> bool:
    """Larger wins; a tie goes to the more inferior slice, so flipped encodings pick the same one."""
    if abs(value - best) > 1e-6:
        return value > best
    return np.isnan(best_s) or s_mm < best_s


def axial_diameters(mask: np.ndarray, geometry: VolumeGeometry, start_kji) -> AxialDiameters:
    """Largest long axis and largest short axis (perpendicular to that slice's long axis) over
    the node's axial slices. Short axis is what nodal staging uses (>= 10 mm: suspicious)."""
    out = AxialDiameters()
    if not mask.any():
        return out
    sar = mask_in_sar_order(mask, geometry, start_kji)
    s_coords = sar.s_coords
    for z in np.flatnonzero(sar.mask.any(axis=(1, 2))):
        caliper = feret_caliper(boundary_points(sar.mask[z], sar.spacing[1:]))
        long_mm, short_mm, s_mm = caliper.long_mm, caliper.short_mm, float(s_coords[z])
        if _better(long_mm, s_mm, out.long_axis_mm, out.long_slice_s_mm):
            out.long_axis_mm, out.long_slice_s_mm = long_mm, s_mm
            out.long_axis_ras = sar.to_ras(z, caliper.long_ends)
        if _better(short_mm, s_mm, out.short_axis_mm, out.short_slice_s_mm):
            out.short_axis_mm, out.short_slice_s_mm = short_mm, s_mm
            out.short_axis_ras = sar.to_ras(z, caliper.short_ends)
            out.short_slice_long_ras = sar.to_ras(z, caliper.long_ends)
    return out


def hu_statistics(image_box: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean and SD of HU under the mask (NaN for an empty mask)."""
    values = image_box[mask]
    if values.size == 0:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std())


def measure_node(result, image: np.ndarray, geometry: VolumeGeometry) -> None:
    """Fill a NodeResult's volume, axes and HU statistics from its mask, in place. `extra` gets the
    S of the long and short axis' slices and, as RAS endpoint pairs, the short axis, its slice's
    longest chord and the long axis (None for an empty mask)."""
    result.volume_mm3 = float(result.mask.sum()) * geometry.voxel_volume_mm3
    diam = axial_diameters(result.mask, geometry, result.bbox_start_kji)
    result.long_axis_mm, result.short_axis_mm = diam.long_axis_mm, diam.short_axis_mm
    result.extra["long_axis_slice_s_mm"] = diam.long_slice_s_mm
    result.extra["short_axis_slice_s_mm"] = diam.short_slice_s_mm
    for key, ends in (("short_axis_ras", diam.short_axis_ras),
                      ("short_axis_slice_long_ras", diam.short_slice_long_ras),
                      ("long_axis_ras", diam.long_axis_ras)):
        result.extra[key] = None if ends is None else ends.tolist()
    result.mean_hu, result.sd_hu = hu_statistics(image[result.slices()], result.mask)
