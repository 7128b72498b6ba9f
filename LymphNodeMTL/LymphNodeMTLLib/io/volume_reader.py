"""Read a CT from disk into the Lib's convention: float32 HU array [k, j, i] + VolumeGeometry.

Accepted: .nrrd, .nhdr, .nii, .nii.gz, .mha, .mhd files and a folder holding a DICOM series. Every
problem the user can fix becomes a one-line InputError; SimpleITK's multi-line errors never leak.
Files and DICOM instances are checked for completeness first (file_integrity.py): a truncated copy
is refused, not read with its missing voxels as 0. A DICOM series whose slices are not a regular stack (gantry tilt, uneven spacing, several slices at
one position) is refused rather than read with wrong geometry; resampling it is out of scope.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError
from ..core.geometry import VolumeGeometry
from .file_integrity import check_dicom_instances, check_image_file_complete

FILE_EXTENSIONS = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
_ACCEPTED = "use .nrrd, .nhdr, .nii, .nii.gz, .mha, .mhd or a folder holding one DICOM series"

# DICOM tags carried into the case metadata (and from there into the outputs).
DICOM_METADATA_TAGS = {
    "PatientID": "0010|0020",
    "StudyInstanceUID": "0020|000d",
    "SeriesInstanceUID": "0020|000e",
    "StudyDate": "0008|0020",
    "Modality": "0008|0060",
    "SeriesDescription": "0008|103e",
}
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_TAG_POSITION = "0020|0032"  # ImagePositionPatient, LPS mm
_TAG_ORIENTATION = "0020|0037"  # ImageOrientationPatient: row and column direction cosines, LPS

# Slices must form a regular stack to 1 %: spacing deviation, and in-plane drift per mm along
# the slice normal (tan of the gantry tilt; 1 % is about 0.6 degrees).
_STACK_TOLERANCE = 0.01


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
    path = Path(path)
    if not path.exists():
        raise InputError(f"CT not found: {path}; check the path")
    if path.is_dir():
        image, metadata = _read_dicom_folder(path, series_uid)
    else:
        image, metadata = _read_file(path), {}
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    return array, VolumeGeometry.from_sitk(image), metadata


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
def _read_dicom_folder(folder: Path, series_uid: str | None) -> tuple[sitk.Image, dict]:
    uid = _choose_series(folder, series_uid)
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
    if len(files) < 2:
        raise InputError(
            f"DICOM series {uid or '(no UID)'} in {folder.name} has only {len(files)} slice(s); "
            "a 3-D CT series is needed"
        )
    check_dicom_instances(files)  # before the stack check: a cut file is the better message
    _refuse_unreadable_dicom(folder, files)
    _check_slice_stack(folder, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOn()
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
    return image, _dicom_metadata(reader)


def _refuse_unreadable_dicom(folder: Path, files) -> None:
    """A DICOM file too damaged for GDCM to place in any series is silently left out of it (a
    missing first or last slice leaves no gap to see), so such files are refused here when they
    are of the series' own SOP class (a structured report or a DICOMDIR beside it is fine)."""
    listed = set()
    for uid in _series_uids(folder):
        listed.update(Path(f).resolve() for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    unlisted = []
    for file in sorted(p for p in folder.iterdir() if p.is_file() and p.resolve() not in listed):
        with open(file, "rb") as f:
            if f.read(132)[128:] == b"DICM":
                unlisted.append(file)
    if unlisted:
        sop_class = _header(files[0]).get("0008|0016", "")
        check_dicom_instances(unlisted, {sop_class, CT_IMAGE_STORAGE} - {""})


def _choose_series(folder: Path, series_uid: str | None) -> str:
    """The SeriesInstanceUID to load: the requested one, or the folder's only one."""
    uids = _series_uids(folder)
    if not uids:
        raise InputError(
            f"no DICOM series found in folder {folder}; pass the folder that directly holds "
            "the DICOM files of one CT series"
        )
    if series_uid is not None and series_uid in uids:
        return series_uid
    if series_uid is None and len(uids) == 1:
        return uids[0]
    listing = "; ".join(_describe_series(folder, uid) for uid in uids)
    problem = (
        f"series {series_uid} is not in folder {folder.name}"
        if series_uid is not None
        else f"folder {folder.name} holds {len(uids)} DICOM series"
    )
    raise InputError(f"{problem}; choose one by its SeriesInstanceUID: {listing}")


def _series_uids(folder: Path) -> list[str]:
    """SeriesInstanceUIDs in the folder; ITK's multi-line 'No Series were found' warning muted."""
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError:
        return []
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)


def _describe_series(folder: Path, uid: str) -> str:
    """'UID ("description", N slices)' for the series listing in error messages."""
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
    description = _header(files[0]).get("0008|103e", "") if files else ""
    return f'{uid or "(no UID)"} ("{description}", {len(files)} slices)'


def _header(file_name: str) -> dict[str, str]:
    """The DICOM tags of one file (header only, pixels not read), values stripped of padding."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(file_name)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(
            f"could not read DICOM file {Path(file_name).name}: it is corrupt; "
            "remove it or re-export the series"
        ) from None
    return {key: reader.GetMetaData(key).strip() for key in reader.GetMetaDataKeys()}


def _dicom_metadata(reader: sitk.ImageSeriesReader) -> dict:
    metadata = {}
    for name, tag in DICOM_METADATA_TAGS.items():
        if reader.HasMetaDataKey(0, tag):
            value = reader.GetMetaData(0, tag).strip()
            if value:
                metadata[name] = value
    return metadata


def _check_slice_stack(folder: Path, files) -> None:
    """Refuse a series that is not a regular stack of parallel slices along their normal.

    ITK builds the geometry from the first slice's position, the slice orientation and the
    distance between the first two slices; any other layout would be silently misplaced.
    """
    headers = [_header(f) for f in files]
    positions, orientations = [], []
    for header in headers:
        try:
            positions.append(_numbers(header[_TAG_POSITION], 3))
            orientations.append(_numbers(header[_TAG_ORIENTATION], 6))
        except (KeyError, ValueError):
            raise InputError(
                f"DICOM series in {folder.name} lacks valid ImagePositionPatient / "
                "ImageOrientationPatient; the CT cannot be placed in patient space"
            ) from None
    orientations = np.array(orientations)
    if np.abs(orientations - orientations[0]).max() > 1e-4:
        raise InputError(
            f"DICOM series in {folder.name} mixes slice orientations; "
            "export the axial (or one) reconstruction as its own series"
        )
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    _check_positions(folder.name, np.array(positions), normal / np.linalg.norm(normal))


def _check_positions(name: str, positions: np.ndarray, normal: np.ndarray) -> None:
    """Slice positions (N, 3), sorted along `normal`, must be evenly spaced along it, no drift."""
    offsets = positions - positions[0]
    along = offsets @ normal
    steps = np.diff(along)
    if np.any(np.abs(steps) < 1e-3):
        raise InputError(
            f"DICOM series in {name} has several slices at the same position (e.g. several "
            "phases or reconstructions in one series); export a single 3-D acquisition"
        )
    spacing = float(np.median(steps))
    if np.abs(steps - spacing).max() > _STACK_TOLERANCE * abs(spacing):
        raise InputError(
            f"DICOM series in {name} has non-uniform slice spacing ({np.abs(steps).min():.2f} "
            f"to {np.abs(steps).max():.2f} mm; missing slices?); resampling is not supported, "
            "so resample it to uniform spacing (e.g. in 3D Slicer) and save as .nrrd"
        )
    in_plane = np.linalg.norm(offsets - along[:, None] * normal[None, :], axis=1)
    drift = float((in_plane[1:] / np.abs(along[1:])).max())
    if drift > _STACK_TOLERANCE:
        raise InputError(
            f"DICOM series in {name} is gantry-tilted or sheared (slices drift "
            f"{np.degrees(np.arctan(drift)):.1f} degrees off their normal); resampling is not "
            "supported, so correct it (e.g. 3D Slicer's DICOM acquisition geometry "
            "regularization) and save as .nrrd"
        )


def _numbers(text: str, count: int) -> np.ndarray:
    """Parse a DICOM multi-valued decimal string like '1\\0\\0'."""
    values = np.array([float(v) for v in text.split("\\")], dtype=float)
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise ValueError(text)
    return values
