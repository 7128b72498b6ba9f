"""The DICOM headers of the series a CT was read from, one per slice in the CT array's k order.

These are what a DICOM SEG references and copies its patient, study and frame of reference from
(outputs/dicom_seg_writer.py). The volume reader keeps them from its one header pass
(`read_ct(...).dicom_headers`); `read_source_datasets` reads them from a folder for a CT read
elsewhere (3D Slicer). Each image is matched to a k plane of the CT grid by its
ImagePositionPatient and ImageOrientationPatient, so no slice order is guessed. Anonymisers
sometimes blank the UIDs inside the data set; then SOP class/instance UIDs are taken from the file
meta header, and an empty Study/Series Instance UID (or Frame of Reference UID) is replaced by a UID
derived deterministically from the series' instance UIDs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..core.geometry import LPS_TO_RAS, VolumeGeometry, lps_to_ras_points
from .dicom_headers import read_dicom_headers
from .dicom_series import CT_IMAGE_STORAGE


def read_source_datasets(folder, geometry: VolumeGeometry, series_uid: str | None = None) -> list:
    """Headers of the DICOM series the CT was read from, one per slice, in the array's k order.

    Args:
        folder: the DICOM folder the CT was read from.
        geometry: the CT's grid; every image must be one of its k planes.
        series_uid: keep only this SeriesInstanceUID (needed when the folder holds several series).

    Raises:
        InputError: when the folder's images do not match the CT grid one to one.
    """
    folder = Path(folder)
    headers = [i.header for i in read_dicom_headers(folder)  # unreadable files are skipped
               if i.header is not None and (not series_uid or i.series_uid == series_uid)]
    return source_datasets(headers, geometry, folder.name)


def source_datasets(headers: list, geometry: VolumeGeometry, name: str) -> list:
    """The images among `headers` (pydicom data sets) matched one to one to the k planes of
    `geometry`, in k order, their blanked UIDs filled. `name` (the folder's) is for messages.

    Raises:
        InputError: when the images do not match the CT grid one to one.
    """
    by_k: dict[int, object] = {}
    for ds in headers:
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            continue
        k = _slice_index(ds, geometry)
        if k is None:
            continue
        if k in by_k:
            raise InputError(
                f"{name} holds several images at slice {k} of the CT; pass --series-uid "
                "to pick the series, or write the DICOM SEG from a folder holding one series"
            )
        by_k[k] = ds
    n_slices = geometry.shape_kji[0]
    if len(by_k) != n_slices:
        raise InputError(
            f"only {len(by_k)} of the CT's {n_slices} slices were found as DICOM images in "
            f"{name}; the DICOM SEG cannot reference its source series"
        )
    datasets = [by_k[k] for k in range(n_slices)]
    _repair_uids(datasets)
    return datasets


def _slice_index(ds, geometry: VolumeGeometry) -> int | None:
    """k of the CT plane this image is, or None when it is not one of the grid's planes."""
    nk, nj, ni = geometry.shape_kji
    if int(ds.get("Rows", 0)) != nj or int(ds.get("Columns", 0)) != ni:
        return None
    ijk_to_lps = LPS_TO_RAS @ geometry.ijk_to_ras
    axes = ijk_to_lps[:3, :3] / geometry.spacing[None, :]
    orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
    if np.abs(orientation[:3] - axes[:, 0]).max() > 1e-3 or np.abs(orientation[3:] - axes[:, 1]).max() > 1e-3:
        return None
    ras = lps_to_ras_points(np.array([float(v) for v in ds.ImagePositionPatient]))
    i, j, k = geometry.ras_to_ijk_points(ras)[0]
    k_index = int(round(k))
    if abs(k - k_index) > 0.25 or not 0 <= k_index < nk:
        return None
    # the volume reader accepts in-plane drift up to 1 % of the distance along the normal
    allowed = 0.5 + 0.011 * abs(k) * geometry.spacing[2] / geometry.spacing[:2].min()
    if abs(i) > allowed or abs(j) > allowed:
        return None
    return k_index


def _repair_uids(datasets: list) -> None:
    """Fill UIDs an anonymiser blanked: SOP UIDs from the file meta, study/series derived."""
    from pydicom.uid import generate_uid

    for ds in datasets:
        meta = getattr(ds, "file_meta", None)
        if not str(ds.get("SOPClassUID", "")):
            ds.SOPClassUID = str(getattr(meta, "MediaStorageSOPClassUID", "") or CT_IMAGE_STORAGE)
        if not str(ds.get("SOPInstanceUID", "")):
            uid = str(getattr(meta, "MediaStorageSOPInstanceUID", "") or "")
            ds.SOPInstanceUID = uid or generate_uid(entropy_srcs=[str(ds.ImagePositionPatient)])
    instance_uids = [str(ds.SOPInstanceUID) for ds in datasets]
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        present = [str(ds.get(keyword, "")) for ds in datasets if str(ds.get(keyword, ""))]
        value = present[0] if present else generate_uid(entropy_srcs=[keyword, *instance_uids])
        for ds in datasets:
            if not str(ds.get(keyword, "")):
                setattr(ds, keyword, value)
    for ds in datasets:  # attributes highdicom copies and pydicom would otherwise lack
        for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                        "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                        "ReferringPhysicianName"):
            if keyword not in ds:
                setattr(ds, keyword, "")
