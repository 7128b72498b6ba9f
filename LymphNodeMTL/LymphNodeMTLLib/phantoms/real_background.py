"""A real CT as a phantom's background: read, resampled onto a phantom's grid, its tissue classes read from HU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.geometry import VolumeGeometry
from ..io.volume_reader import read_volume
from .scanner import blur_mm
from .tissue_scene import AIR, AIR_HU, BONE, FAT, PARTIAL_VOLUME, SOFT_TISSUE, TissueScene

REAL_FAT_HU = (-150.0, -50.0)  # fat in a real CT, after the calming blur
SIMILAR_HU = (0.0, 150.0)  # a real CT's tissue that a node can abut without a visible edge
CALMING_BLUR_MM = 0.7  # a light blur before the thresholds, so the CT's noise does not speckle them


def read_background(background) -> tuple[np.ndarray, VolumeGeometry, str]:
    """(float32 HU [k, j, i], geometry, source name) of a background given as a path SimpleITK reads
    (a file or a DICOM series folder) or as an (image, VolumeGeometry) pair ("array")."""
    if isinstance(background, (str, Path)):
        array, geometry, _ = read_volume(background)
        return array, geometry, str(background)
    array, geometry = background
    return np.asarray(array, dtype=np.float32), geometry, "array"


def resample_onto(array: np.ndarray, geometry: VolumeGeometry, target: VolumeGeometry) -> np.ndarray:
    """The CT linearly resampled onto the `target` grid (air where it has no data), float32."""
    moving = sitk.GetImageFromArray(array)
    geometry.apply_to_sitk(moving)
    reference = sitk.Image([int(n) for n in target.shape_kji[::-1]], sitk.sitkFloat32)
    target.apply_to_sitk(reference)
    resampled = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkLinear, AIR_HU)
    return sitk.GetArrayFromImage(resampled).astype(np.float32)


def real_ct_scene(hu: np.ndarray, geometry: VolumeGeometry) -> TissueScene:
    """A real CT as a scene: nodes are drawn into a copy, the CT itself is kept as `original`.

    Tissue classes from the calmed HU: FAT, SOFT_TISSUE (what a node can abut unseen), BONE for
    anything denser (bone, contrast-filled vessels and bowel: never under a node), PARTIAL_VOLUME
    between fat and soft tissue, AIR for air and lung.
    """
    smooth = blur_mm(hu, geometry, CALMING_BLUR_MM)
    tissue = np.full(hu.shape, AIR, dtype=np.uint8)
    tissue[(smooth >= REAL_FAT_HU[0]) & (smooth <= REAL_FAT_HU[1])] = FAT
    tissue[(smooth >= SIMILAR_HU[0]) & (smooth <= SIMILAR_HU[1])] = SOFT_TISSUE
    tissue[smooth > SIMILAR_HU[1]] = BONE
    tissue[(smooth > REAL_FAT_HU[1]) & (smooth < SIMILAR_HU[0])] = PARTIAL_VOLUME
    return TissueScene(hu.copy(), tissue, geometry, original=hu)
