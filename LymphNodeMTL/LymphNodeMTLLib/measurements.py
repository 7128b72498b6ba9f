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


def mask_in_sar_order(mask: np.ndarray, geometry: VolumeGeometry, start_kji):
    """The mask as an array indexed (S, A, R) with its spacing (s, a, r) and the S coordinate of
    each plane. Exact (no interpolation) for axis-aligned CTs."""
    sub_geom = geometry.crop(start_kji, np.add(start_kji, mask.shape))
    if geometry.is_axis_aligned():
        direction = sub_geom.direction_ras  # columns: i, j, k axes in RAS
        ras_axis_of_ijk = np.argmax(np.abs(direction), axis=0)
        # array axes are (k, j, i); target order is (S=2, A=1, R=0)
        array_axis_of_ras = {int(ras_axis_of_ijk[ijk]): 2 - ijk for ijk in range(3)}
        order = [array_axis_of_ras[2], array_axis_of_ras[1], array_axis_of_ras[0]]
        sar = np.transpose(mask, order)
        spacing_ijk = sub_geom.spacing
        spacing_sar = np.array([spacing_ijk[2 - order[n]] for n in range(3)])
        s_axis_ijk = 2 - order[0]
        ijk = np.zeros((sar.shape[0], 3))
        ijk[:, s_axis_ijk] = np.arange(sar.shape[0])
        s_coords = sub_geom.ijk_to_ras_points(ijk)[:, 2]
        return sar, spacing_sar, s_coords
    return _resample_to_sar(mask, sub_geom)


def _resample_to_sar(mask: np.ndarray, geometry: VolumeGeometry):
    step = float(geometry.spacing.min())
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
    sampled = ndimage.map_coordinates(mask.astype(np.float32), coords, order=1, cval=0.0)
    sar = sampled.reshape(s.shape) > 0.5
    return sar, np.array([step, step, step]), axes[2]


def _feret(points: np.ndarray, spacing_ar: np.ndarray):
    """Longest chord of a 2-D point set and its perpendicular extent, from pixel centres (mm),
    widened by one pixel along each direction so a disc of diameter D measures about D."""
    if len(points) == 1:
        return float(spacing_ar.max()), float(spacing_ar.min())
    try:
        hull = points[ConvexHull(points).vertices]
    except (QhullError, ValueError):
        hull = points  # collinear or tiny: brute force over all points
    diff = hull[:, None, :] - hull[None, :, :]
    d2 = (diff**2).sum(-1)
    a, b = np.unravel_index(int(np.argmax(d2)), d2.shape)
    u = diff[a, b] / np.sqrt(d2[a, b])
    v = np.array([-u[1], u[0]])
    proj = points @ v
    pixel_u = float(np.hypot(u[0] * spacing_ar[0], u[1] * spacing_ar[1]))
    pixel_v = float(np.hypot(v[0] * spacing_ar[0], v[1] * spacing_ar[1]))
    return float(np.sqrt(d2[a, b])) + pixel_u, float(proj.max() - proj.min()) + pixel_v


def axial_diameters(mask: np.ndarray, geometry: VolumeGeometry, start_kji) -> AxialDiameters:
    """Largest long axis and largest short axis (perpendicular to that slice's long axis) over
    the node's axial slices. Short axis is what nodal staging uses (>= 10 mm: suspicious)."""
    out = AxialDiameters()
    if not mask.any():
        return out
    sar, spacing, s_coords = mask_in_sar_order(mask, geometry, start_kji)
    spacing_ar = spacing[1:]
    for z in np.flatnonzero(sar.any(axis=(1, 2))):
        pts = np.argwhere(sar[z]) * spacing_ar
        long_mm, short_mm = _feret(pts.astype(float), spacing_ar)
        if long_mm > out.long_axis_mm:
            out.long_axis_mm, out.long_slice_s_mm = long_mm, float(s_coords[z])
        if short_mm > out.short_axis_mm:
            out.short_axis_mm, out.short_slice_s_mm = short_mm, float(s_coords[z])
    return out


def hu_statistics(image_box: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean and SD of HU under the mask (NaN for an empty mask)."""
    values = image_box[mask]
    if values.size == 0:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std())


def measure_node(result, image: np.ndarray, geometry: VolumeGeometry) -> None:
    """Fill a NodeResult's volume, axes and HU statistics from its mask, in place."""
    result.volume_mm3 = float(result.mask.sum()) * geometry.voxel_volume_mm3
    diam = axial_diameters(result.mask, geometry, result.bbox_start_kji)
    result.long_axis_mm, result.short_axis_mm = diam.long_axis_mm, diam.short_axis_mm
    result.extra["long_axis_slice_s_mm"] = diam.long_slice_s_mm
    result.extra["short_axis_slice_s_mm"] = diam.short_slice_s_mm
    result.mean_hu, result.sd_hu = hu_statistics(image[result.slices()], result.mask)
