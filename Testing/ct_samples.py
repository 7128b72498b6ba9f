"""Small CT-like volumes and their bad variants for the input-checking tests: a body of fat and
soft tissue in air, with one node, written the way a user would hand it to the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from LymphNodeMTLLib.core.case import Seed
from LymphNodeMTLLib.core.geometry import VolumeGeometry
from LymphNodeMTLLib.io.volume_reader import write_volume
from seed_csv import write_seeds_csv

SHAPE_KJI = (14, 56, 60)
SPACING = (0.8, 0.75, 2.0)  # i, j, k mm


def body_geometry(spacing=SPACING, shape_kji=SHAPE_KJI, direction=None) -> VolumeGeometry:
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    return VolumeGeometry.from_lps((-20.0, -15.0, 40.0), spacing, direction, shape_kji)


def body_ct(rng: np.random.Generator, shape_kji=SHAPE_KJI, fov_circle: bool = False) -> np.ndarray:
    """Air around an elliptic body of fat (-100 HU) with a muscle band (45 HU) and a 30 HU node in
    the middle, with scanner-like noise. fov_circle: NaN outside a circle touching the slice edges
    (what some scanners write outside their reconstruction field of view)."""
    nk, nj, ni = shape_kji
    j, i = np.mgrid[0:nj, 0:ni]
    cj, ci = (nj - 1) / 2, (ni - 1) / 2
    r = np.hypot((j - cj) / (0.42 * nj), (i - ci) / (0.42 * ni))
    plane = np.full((nj, ni), -1000.0)
    plane[r < 1.0] = -100.0
    plane[(r > 0.75) & (r < 0.9)] = 45.0
    image = np.repeat(plane[None], nk, axis=0)
    k, jj, ii = np.mgrid[0:nk, 0:nj, 0:ni]
    node = ((k - nk / 2) * 2.0) ** 2 + ((jj - cj) * 0.75) ** 2 + ((ii - ci) * 0.8) ** 2 < 5.0**2
    image[node] = 30.0
    image = image + rng.normal(0, 8, image.shape)
    if fov_circle:
        outside = np.hypot((j - cj) / (nj / 2), (i - ci) / (ni / 2)) > 1.0
        image[:, outside] = np.nan
    return image.astype(np.float32)


def centre_ras(geometry: VolumeGeometry) -> np.ndarray:
    centre = (np.asarray(geometry.shape_kji[::-1], dtype=float) - 1) / 2
    return geometry.ijk_to_ras_points(centre)[0]


def write_case(folder: Path, image: np.ndarray, geometry: VolumeGeometry, name: str = "ct.nrrd",
               seeds=None) -> tuple[Path, Path]:
    """The CT file and a seed CSV (default: one seed on the node, one 6 mm beside it)."""
    folder.mkdir(parents=True, exist_ok=True)
    ct = folder / name
    write_volume(ct, image, geometry)
    centre = centre_ras(geometry)
    if seeds is None:
        seeds = [Seed("1", tuple(centre)), Seed("2", tuple(centre + [6.0, 0.0, 0.0]))]
    seeds_path = folder / "seeds.csv"
    write_seeds_csv(seeds_path, seeds)
    return ct, seeds_path


def write_dicom_series(folder: Path, array: np.ndarray, modality: str = "CT") -> Path:
    """One DICOM file per slice of an int16 [k, j, i] array on body_geometry()'s grid (axial)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(array.shape[0]):
        plane = sitk.GetImageFromArray(array[k : k + 1])
        plane.SetSpacing((0.8, 0.75, 2.0))
        plane.SetOrigin((-20.0, -15.0, 40.0 + 2.0 * k))
        for tag, value in {"0008|0060": modality, "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
                           "0008|0018": f"1.2.826.0.1.3680043.2.1125.17.{k + 1}",
                           "0020|000d": "1.2.826.0.1.3680043.2.1125.18",
                           "0020|000e": "1.2.826.0.1.3680043.2.1125.19", "0020|0013": str(k + 1),
                           "0018|0050": "2.0"}.items():  # SliceThickness: a DICOM SEG copies it
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"im{k:02d}.dcm"))
        writer.Execute(plane)
    return folder
