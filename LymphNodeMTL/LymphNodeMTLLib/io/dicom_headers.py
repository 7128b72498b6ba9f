"""The DICOM files of a folder, each opened once for its header.

Every file is read once by pydicom with its pixel data skipped (only that element's length is
taken). That one header feeds everything that needs DICOM attributes: the completeness check
(file_integrity.py), the choice of series, the slice stack check and order and the case metadata
(volume_reader.py), and the DICOM SEG's source references (dicom_sources.py). Only SimpleITK's
pixel read opens the files of the chosen series again.

pydicom rather than GDCM through SimpleITK: it gives the pixel data element's length and position
without reading the pixels, which is what the completeness check needs, and its datasets are what
highdicom takes as source images; SimpleITK's header read gives neither.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

from .file_integrity import UNREADABLE_DICOM, dicom_pixel_data_problem

# Values longer than this are skipped, not read (pixel data, large private blocks).
_DEFER_BYTES = 4096
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass
class DicomInstance:
    """One DICOM file of a folder, as the header pass read it.

    Attributes:
        path: the file.
        header: its data set without pixel data (a pydicom Dataset); None when the file cannot be
            read as DICOM to its end.
        problem: why the file is incomplete (file_integrity.py), None when it is whole.
        has_pixel_data: whether it holds pixel data (an image, not a DICOMDIR or a report).
    """

    path: Path
    header: object | None
    problem: str | None = None
    has_pixel_data: bool = False

    @property
    def sop_class(self) -> str:
        if self.header is None:
            return ""
        meta = getattr(self.header, "file_meta", None)
        return str(getattr(meta, "MediaStorageSOPClassUID", "") or "") or self.text("SOPClassUID")

    @property
    def series_uid(self) -> str:
        return self.text("SeriesInstanceUID")

    def text(self, keyword: str) -> str:
        """An attribute as text, multiple values joined by '\\', without padding; '' when absent."""
        if self.header is None:
            return ""
        from pydicom.multival import MultiValue

        value = self.header.get(keyword)
        if value is None:
            return ""
        if isinstance(value, MultiValue):
            return "\\".join(str(v) for v in value).strip()
        return str(value).strip()


def read_dicom_headers(folder) -> list[DicomInstance]:
    """The DICOM files directly in `folder`, in file name order, each read once (pixels skipped).
    Files that are not DICOM (no 'DICM' marker: text files, notes) are left out."""
    instances = []
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        instance = _read_instance(path)
        if instance is not None:
            instances.append(instance)
    return instances


def _read_instance(path: Path) -> DicomInstance | None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            header = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
        except InvalidDicomError:
            return None  # no 'DICM' marker: not a DICOM file
        except (OSError, ValueError, EOFError, struct.error, AttributeError):
            return DicomInstance(path, None, UNREADABLE_DICOM)
    problem = dicom_pixel_data_problem(header, path.stat().st_size, [str(w.message) for w in caught])
    has_pixel_data = "PixelData" in header
    for keyword in _PIXEL_DATA_KEYWORDS:  # never read: deleting a skipped value does not load it
        if keyword in header:
            delattr(header, keyword)
    return DicomInstance(path, header, problem, has_pixel_data)
