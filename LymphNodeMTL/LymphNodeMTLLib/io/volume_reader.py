"""Read a CT from disk into the Lib's convention: float32 HU array [k, j, i] + VolumeGeometry.

Accepted: .nrrd, .nhdr, .nii, .nii.gz, .mha, .mhd files and a folder holding a DICOM series. Every
problem the user can fix becomes a one-line InputError; SimpleITK's multi-line errors never leak.
Files are checked for completeness first (file_integrity.py): a truncated copy is refused, not read
with its missing voxels as 0. A DICOM folder is read header by header once (dicom_series.py: the
series, its completeness and a regular stack of slices, refused otherwise since resampling is out
of scope); SimpleITK then reads the pixels of those files, in that order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError
from ..core.geometry import VolumeGeometry
from .dicom_series import DicomSeries, read_dicom_series
from .file_integrity import check_image_file_complete

FILE_EXTENSIONS = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
_ACCEPTED = "use .nrrd, .nhdr, .nii, .nii.gz, .mha, .mhd or a folder holding one DICOM series"


@dataclass
class CtVolume:
    """A CT as read: the HU array [k, j, i], its geometry, the DICOM identifiers (empty for image
    files) and, for a DICOM series, its slices' headers in k order with pixel data left out (what
    a DICOM SEG references; None for image files)."""

    image: np.ndarray
    geometry: VolumeGeometry
    metadata: dict
    dicom_headers: list | None = None


def read_ct(path, series_uid: str | None = None) -> CtVolume:
    """Read a CT volume; see `read_volume`. Also keeps a DICOM series' headers, so nothing reads
    them again."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"CT not found: {path}; check the path")
    if path.is_dir():
        image, series = _read_dicom_folder(path, series_uid)
        metadata, headers = series.metadata, series.headers
    else:
        image, metadata, headers = _read_file(path), {}, None
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    return CtVolume(array, VolumeGeometry.from_sitk(image), metadata, headers)


def read_volume(path, series_uid: str | None = None) -> tuple[np.ndarray, VolumeGeometry, dict]:
    """Read a CT volume.

    Args:
        path: an image file or a folder holding DICOM files.
        series_uid: SeriesInstanceUID to load when a DICOM folder holds several series
            (ignored for files).

    Returns:
        (image, geometry, metadata): float32 HU array indexed [k, j, i], its geometry, and the DICOM
        identifiers found (PatientID, StudyInstanceUID, SeriesInstanceUID, StudyDate, Modality,
        SeriesDescription; only those present and non-empty; empty for non-DICOM files).
    """
    ct = read_ct(path, series_uid)
    return ct.image, ct.geometry, ct.metadata


def read_volume_geometry(path) -> VolumeGeometry:
    """The grid of a CT file from its header alone (pixels not read); a DICOM folder is read whole."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"image not found: {path}; check the path")
    if path.is_dir():
        return read_volume(path)[1]
    name = path.name.lower()
    if not name.endswith(FILE_EXTENSIONS):
        raise InputError(f"unsupported image file type: {path.name}; {_ACCEPTED}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"could not read {path.name}: the file is corrupt or not a valid image "
                         "of its type; re-export it") from None
    _check_scalar_3d(path.name, reader.GetDimension(), reader.GetNumberOfComponents(), reader.GetSize())
    size = reader.GetSize()
    return VolumeGeometry.from_lps(reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection(), size[::-1])


def write_volume(path, image: np.ndarray, geometry: VolumeGeometry) -> None:
    """Write a [k, j, i] array with its geometry; the format follows the extension.

    Boolean arrays (masks) are written as uint8, which every format supports.
    """
    array = np.asarray(image)
    if tuple(array.shape) != tuple(geometry.shape_kji):
        raise ValueError(f"image shape {array.shape} differs from geometry {geometry.shape_kji}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    sitk_image = sitk.GetImageFromArray(array)
    geometry.apply_to_sitk(sitk_image)
    try:
        sitk.WriteImage(sitk_image, str(path), useCompression=True)
    except RuntimeError:
        raise InputError(
            f"could not write {path}; check that its folder exists and is writable "
            f"and that the extension is one of {', '.join(FILE_EXTENSIONS)}"
        ) from None


# --- single files ---------------------------------------------------------------------------------
def _read_file(path: Path) -> sitk.Image:
    name = path.name.lower()
    if name.endswith((".dcm", ".ima")):
        raise InputError(
            f"{path.name} is a single DICOM file; pass the folder that holds the whole series"
        )
    if not name.endswith(FILE_EXTENSIONS):
        raise InputError(f"unsupported CT file type: {path.name}; {_ACCEPTED}")
    check_image_file_complete(path)  # a truncated file would read with its missing voxels as 0
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        # Header first, so a 4-D or colour image is refused before its pixels are loaded.
        reader.ReadImageInformation()
        _check_scalar_3d(
            path.name, reader.GetDimension(), reader.GetNumberOfComponents(), reader.GetSize()
        )
        return reader.Execute()
    except RuntimeError:
        raise InputError(
            f"could not read {path.name}: the file is corrupt or not a valid image of its type; "
            "re-export the CT (e.g. from 3D Slicer as .nrrd)"
        ) from None


def _check_scalar_3d(name: str, dimension: int, components: int, size) -> None:
    """Refuse anything but a single-channel 3-D volume with more than one voxel along every axis."""
    if dimension == 2:
        raise InputError(f"{name} is a 2-D image; a 3-D CT volume is needed")
    if dimension != 3:
        raise InputError(
            f"{name} is a {dimension}-D image (e.g. a time series); load a single 3-D CT volume"
        )
    if components != 1:
        raise InputError(
            f"{name} has {components} values per voxel (colour or vector image); "
            "a single-channel CT in HU is needed"
        )
    if min(size) < 2:
        raise InputError(
            f"{name} is a single slice ({'x'.join(str(s) for s in size)} voxels); "
            "a 3-D CT volume is needed"
        )


# --- DICOM ----------------------------------------------------------------------------------------
def _read_dicom_folder(folder: Path, series_uid: str | None) -> tuple[sitk.Image, DicomSeries]:
    series = read_dicom_series(folder, series_uid)  # checked, in stack order, pixels unread
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(series.files)
    try:
        image = reader.Execute()  # applies RescaleSlope/Intercept, so the pixels are HU
    except RuntimeError:
        raise InputError(
            f"could not read the DICOM series in {folder.name}: a file is corrupt or unsupported "
            "(e.g. compressed with an unavailable codec); re-export the series"
        ) from None
    _check_scalar_3d(
        f"DICOM series in {folder.name}",
        image.GetDimension(),
        image.GetNumberOfComponentsPerPixel(),
        image.GetSize(),
    )
    return image, series
