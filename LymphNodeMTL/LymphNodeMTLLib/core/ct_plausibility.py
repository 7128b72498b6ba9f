"""Does this image look like a CT in Hounsfield units? One check shared by the CLI, the server and
the Slicer Logic, run before any network sees the image, once per process where the CT enters it
(predict's load_case, the server's add_volume, the Slicer Logic's Case.validate).

A result that looks plausible and is wrong is worse than an error, so an image is refused, with one
line saying what is wrong, when:
- its DICOM Modality says it is not CT (MR, PT, ...);
- its voxel spacing is outside what a CT scanner produces (a CT stored in metres has spacing near
  0.001) or its direction is not orthonormal (sheared or skewed axes);
- its intensities are not HU: constant (an all-zero volume), a few integer values (a label map, a
  segmentation given as the CT), nothing below 0 (no air, no fat: raw scanner values without the
  rescale, MR or PET intensities), or fat or soft tissue missing from the histogram;
- it holds NaN or infinite voxels inside the body. Non-finite voxels outside the body (scanners
  write them outside the circular field of view) are set to air, and a warning says how many.

The HU ranges are wide on purpose: CTs rebuilt from 8-bit windowed images (every value below the
window reads as -1000) and crops around the mediastinum must pass. Air is not required in the
histogram, as fat and soft tissue are: a CT cropped to the region around the nodes (a common
export) may hold no air, while every image that is not CT in HU lacks fat (-190 to -30 HU).
"""

from __future__ import annotations

import sys
from typing import Callable

import numpy as np

from .errors import InputError
from .geometry import VolumeGeometry

AIR_HU = -1000.0
# HU ranges of the tissues around every lymph node, and the share of voxels each must have.
FAT_RANGE_HU = (-190.0, -30.0)
SOFT_TISSUE_RANGE_HU = (0.0, 100.0)
MIN_FAT_FRACTION = 0.001
MIN_SOFT_TISSUE_FRACTION = 0.001
# A label map has a handful of integer values; a CT has hundreds (256 for 8-bit rebuilt CTs).
MAX_LABEL_MAP_VALUES = 64
# Physical voxel size limits, mm: finer is micro-CT or metres taken for mm; coarser is no CT.
MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 20.0
# Direction columns must be orthonormal to this (rounding in headers stays far below it).
ORTHONORMAL_TOLERANCE = 1e-3
# Voxels above this are body when finding where non-finite voxels lie.
BODY_THRESHOLD_HU = -500.0
# Histogram checks look at up to this many voxels (an even subsample: fractions, not exact counts).
_HISTOGRAM_SAMPLE = 4_000_000
NON_CT_MODALITIES_HINT = "load the CT series (Modality CT) of the study"


def stderr_warning(message: str) -> None:
    print(f"lymphnode-mtl: warning: {message}", file=sys.stderr)


def check_ct_plausibility(
    image: np.ndarray,
    geometry: VolumeGeometry,
    modality: str | None = None,
    name: str = "the CT",
    warn: Callable[[str], None] = stderr_warning,
) -> np.ndarray:
    """Refuse an image that is not a plausible CT in HU; return the image to use.

    Args:
        image: the volume, [k, j, i], in HU.
        geometry: its grid (spacing and direction are checked).
        modality: DICOM Modality when the image came from DICOM, else None (not checked).
        name: how messages call the image (a file name, a Slicer node name).
        warn: receives one line per repair made (non-finite voxels outside the body set to air).

    Returns:
        `image` itself, or a float32 copy with non-finite voxels outside the body set to -1000 HU.

    Raises:
        InputError: one line saying what is wrong and what to do.
    """
    _check_modality(modality, name)
    _check_geometry(geometry, name)
    image = _repair_non_finite(np.asarray(image), name, warn)
    _check_intensities(image, name)
    return image


def _check_modality(modality: str | None, name: str) -> None:
    if modality is None or not str(modality).strip():
        return
    modality = str(modality).strip().upper()
    if modality != "CT":
        raise InputError(
            f"{name} is DICOM Modality {modality}, not CT; the model reads CT in Hounsfield units, "
            f"so {NON_CT_MODALITIES_HINT}"
        )


def _check_geometry(geometry: VolumeGeometry, name: str) -> None:
    spacing = geometry.spacing
    shown = " x ".join(f"{s:.4g}" for s in spacing)
    if not np.all(np.isfinite(spacing)) or spacing.min() < MIN_SPACING_MM:
        raise InputError(
            f"{name} has voxel spacing {shown} mm, below {MIN_SPACING_MM} mm: no CT is that fine "
            "(is the spacing in metres?); fix the header's spacing to millimetres"
        )
    if spacing.max() > MAX_SPACING_MM:
        raise InputError(
            f"{name} has voxel spacing {shown} mm, above {MAX_SPACING_MM:g} mm: not a diagnostic "
            "CT (is the spacing in another unit?); fix the header's spacing to millimetres"
        )
    direction = geometry.direction_ras
    gram = direction.T @ direction
    skew = float(np.abs(gram - np.eye(3)).max())
    if skew > ORTHONORMAL_TOLERANCE:
        angle = float(np.degrees(np.arcsin(min(1.0, np.abs(gram - np.diag(np.diag(gram))).max()))))
        raise InputError(
            f"{name} has sheared axes (directions {angle:.1f} degrees off perpendicular); "
            "resampling is not supported, so resample it to an orthogonal grid (e.g. in 3D Slicer) "
            "and save as .nrrd"
        )


def _repair_non_finite(image: np.ndarray, name: str, warn) -> np.ndarray:
    """Non-finite voxels outside the body become air; inside the body they are refused."""
    finite = np.isfinite(image)
    bad = int(finite.size - np.count_nonzero(finite))
    if bad == 0:
        return image
    if bad == finite.size:
        raise InputError(f"{name} holds no finite value (all NaN or infinite); re-export the CT")
    inside = _enclosed_by_body(image, finite)
    bad_inside = int(np.count_nonzero(inside & ~finite))
    if bad_inside:
        k, j, i = np.argwhere(inside & ~finite)[0]
        raise InputError(
            f"{name} has {bad_inside} NaN or infinite voxel(s) inside the body (first at voxel "
            f"i={i}, j={j}, k={k}); the CT is damaged there, re-export or reconstruct it again"
        )
    repaired = image.astype(np.float32, copy=True)
    repaired[~finite] = AIR_HU
    warn(f"{name} has {bad} NaN or infinite voxel(s) outside the body (e.g. outside the scanner's "
         f"field of view); they were read as air ({AIR_HU:g} HU)")
    return repaired


def _enclosed_by_body(image: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """Voxels inside the body's outline, slice by slice: everything but the body (finite, above
    -500 HU) that is connected, within its slice, to the slice border lies outside. A non-finite
    voxel in a hole of the body lies inside it; one in the circle outside the field of view does
    not. (One labelling pass over the volume: fast enough for whole CTs.)"""
    from scipy import ndimage  # lazily: keeps importing the Lib cheap

    with np.errstate(invalid="ignore"):
        body = finite & (image > BODY_THRESHOLD_HU)
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    labels, count = ndimage.label(~body, structure=in_plane)
    touches_border = np.zeros(count + 1, dtype=bool)
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        touches_border[edge] = True
    touches_border[0] = False  # label 0 is the body itself
    return ~touches_border[labels]


def _check_intensities(image: np.ndarray, name: str) -> None:
    flat = image.reshape(-1)
    if flat.size > _HISTOGRAM_SAMPLE:
        flat = flat[:: flat.size // _HISTOGRAM_SAMPLE + 1]
    flat = flat.astype(np.float32, copy=False)
    lo, hi = float(flat.min()), float(flat.max())
    if lo == hi:
        raise InputError(
            f"{name} has the same value ({lo:g}) in every voxel: an empty image, not a CT; "
            "load the CT itself"
        )
    if lo >= 0:
        values = np.unique(flat)
        if len(values) <= MAX_LABEL_MAP_VALUES and np.all(values == np.round(values)):
            raise InputError(
                f"{name} holds only {len(values)} integer values ({lo:g} to {hi:g}): it is a label "
                "map or segmentation, not a CT; pass the CT the seeds were placed on"
            )
        raise InputError(
            f"{name} has no value below 0 (range {lo:g} to {hi:g}), but air is -1000 HU in CT: "
            "these are raw scanner values without the rescale slope/intercept, or MR or PET "
            "intensities; load the CT in Hounsfield units"
        )
    shares = {
        "fat (-190 to -30 HU)": (_share(flat, FAT_RANGE_HU), MIN_FAT_FRACTION),
        "soft tissue (0 to 100 HU)": (_share(flat, SOFT_TISSUE_RANGE_HU), MIN_SOFT_TISSUE_FRACTION),
    }
    missing = [tissue for tissue, (share, least) in shares.items() if share < least]
    if missing:
        raise InputError(
            f"{name} does not look like a CT in HU (range {lo:g} to {hi:g}): it shows no "
            f"{' and no '.join(missing)}; load a chest or abdomen CT in Hounsfield units"
        )


def _share(values: np.ndarray, hu_range) -> float:
    low, high = hu_range
    return float(np.count_nonzero((values >= low) & (values <= high))) / values.size
