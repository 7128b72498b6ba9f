"""Which files of a DICOM folder make the CT, and in which order, from the folder's one header pass
(dicom_headers.py).

The series is the folder's only one, or the one asked for by its SeriesInstanceUID; its slices
are the images (files with pixel data) of that series. Before any pixel is read, every slice and
every other DICOM file that is no image of another series must be complete (file_integrity.py; a
file too damaged to show its series is one of those), and the slices must form a regular stack of
parallel slices along their normal: a gantry tilt, uneven spacing or several slices at one position
would be read with wrong geometry, and resampling is out of scope. The slices are ordered along
their normal, as ITK's GDCM series reader orders them, so the volume reader stacks them as it did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from .dicom_headers import DicomInstance, read_dicom_headers
from .file_integrity import check_dicom_instances

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
# DICOM attributes carried into the case metadata (and from there into the outputs).
METADATA_KEYWORDS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "StudyDate", "Modality",
                     "SeriesDescription")

# Slices must form a regular stack to 1 %: spacing deviation, and in-plane drift per mm along
# the slice normal (tan of the gantry tilt; 1 % is about 0.6 degrees).
_STACK_TOLERANCE = 0.01


@dataclass
class DicomSeries:
    """The slices of one series, in stack order (slice k of the CT array is slices[k])."""

    uid: str
    slices: list[DicomInstance]

    @property
    def files(self) -> list[str]:
        return [str(s.path) for s in self.slices]

    @property
    def headers(self) -> list:
        """The slices' pydicom data sets, pixel data left out."""
        return [s.header for s in self.slices]

    @property
    def metadata(self) -> dict:
        """METADATA_KEYWORDS of the first slice, those present and non-empty."""
        values = {name: self.slices[0].text(name) for name in METADATA_KEYWORDS}
        return {name: value for name, value in values.items() if value}


def read_dicom_series(folder, series_uid: str | None = None) -> DicomSeries:
    """The series to read from a DICOM folder, checked and in stack order. Raises InputError (one
    line) for a folder without a series, several series and none chosen, a single slice, an
    incomplete file, or slices that are no regular stack."""
    folder = Path(folder)
    instances = read_dicom_headers(folder)
    images = [i for i in instances if i.header is not None and i.has_pixel_data]
    uid = _choose_series(folder, images, series_uid)
    slices = [i for i in images if i.series_uid == uid]
    if len(slices) < 2:
        raise InputError(
            f"DICOM series {uid or '(no UID)'} in {folder.name} has only {len(slices)} slice(s); "
            "a 3-D CT series is needed"
        )
    # before the stack check: a cut file is the better message
    check_dicom_instances(slices)
    # A file that shows no series (cut inside its header, no pixel data) could be a missing first
    # or last slice, which leaves no gap to see: refused when of the series' own SOP class (a
    # structured report or a DICOMDIR beside it is fine).
    unplaced = [i for i in instances if i.header is None or not i.has_pixel_data]
    check_dicom_instances(unplaced, {slices[0].sop_class, CT_IMAGE_STORAGE} - {""})
    return DicomSeries(uid, _stack_order(folder.name, slices))


def _choose_series(folder: Path, images: list[DicomInstance], series_uid: str | None) -> str:
    """The SeriesInstanceUID to read: the requested one, or the folder's only one."""
    uids = sorted({i.series_uid for i in images})
    if not uids:
        raise InputError(
            f"no DICOM series found in folder {folder}; pass the folder that directly holds "
            "the DICOM files of one CT series"
        )
    if series_uid is not None and series_uid in uids:
        return series_uid
    if series_uid is None and len(uids) == 1:
        return uids[0]
    listing = "; ".join(_describe_series(uid, [i for i in images if i.series_uid == uid]) for uid in uids)
    problem = (
        f"series {series_uid} is not in folder {folder.name}"
        if series_uid is not None
        else f"folder {folder.name} holds {len(uids)} DICOM series"
    )
    raise InputError(f"{problem}; choose one by its SeriesInstanceUID: {listing}")


def _describe_series(uid: str, images: list[DicomInstance]) -> str:
    """'UID ("description", N slices)' for the series listing in error messages."""
    return f'{uid or "(no UID)"} ("{images[0].text("SeriesDescription")}", {len(images)} slices)'


def _stack_order(name: str, slices: list[DicomInstance]) -> list[DicomInstance]:
    """The slices sorted along their normal, once they are known to be a regular stack.

    ITK builds the geometry from the first slice's position, the slice orientation and the
    distance between the first two slices; any other layout would be silently misplaced.
    """
    positions, orientations = [], []
    for s in slices:
        try:
            positions.append(_numbers(s.text("ImagePositionPatient"), 3))
            orientations.append(_numbers(s.text("ImageOrientationPatient"), 6))
        except (TypeError, ValueError):
            raise InputError(
                f"DICOM series in {name} lacks valid ImagePositionPatient / "
                "ImageOrientationPatient; the CT cannot be placed in patient space"
            ) from None
    orientations = np.array(orientations)
    if np.abs(orientations - orientations[0]).max() > 1e-4:
        raise InputError(
            f"DICOM series in {name} mixes slice orientations; "
            "export the axial (or one) reconstruction as its own series"
        )
    positions = np.array(positions)
    order = np.argsort(positions @ _unit_normal(orientations[0]), kind="stable")
    _check_positions(name, positions[order], _unit_normal(orientations[order[0]]))
    return [slices[n] for n in order]


def _unit_normal(orientation: np.ndarray) -> np.ndarray:
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / np.linalg.norm(normal)


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
