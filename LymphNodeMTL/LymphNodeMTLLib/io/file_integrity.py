"""Is an image file complete? Checked before its pixels are used.

An interrupted copy from a network share leaves a file whose header is whole and whose pixel data
stops early; image readers then fill the missing voxels with 0 (which is 0 HU: water) or with
whatever the stream held. So before a CT is read:
- .nii and .nii.gz: the payload reaches vox_offset + the voxels the header declares;
- .nrrd and .nhdr (raw, gzip or bzip2 data, attached or detached): the data reaches the size the
  `sizes` and `type` fields declare;
- .mha and .mhd (raw or zlib-compressed, local or detached data): the data reaches DimSize x
  ElementType (x channels);
- every compressed stream ends with its end-of-stream marker and its checksum (gzip CRC-32 and
  length, zlib Adler-32, bzip2 CRC) matches;
- DICOM instances: each file's pixel data is as long as Rows x Columns x frames x samples x bits
  say (native), or its encapsulated fragments end with their delimiter (compressed); judged from
  the folder's one header pass (dicom_headers.py), the pixels themselves never read.

Formats and layouts this cannot size (ASCII NRRD, file lists) are left to the image reader.
"""

from __future__ import annotations

import bz2
import struct
import zlib
from pathlib import Path

from ..core.errors import InputError

_CHUNK = 1 << 16  # compressed bytes per read; small, as zeros inflate a thousandfold
_REEXPORT = "the file is incomplete (an interrupted copy?) or damaged; copy or export it again"

_NRRD_TYPE_BYTES = {}
for _names, _size in (
    (("signedchar", "int8", "int8_t", "uchar", "unsignedchar", "uint8", "uint8_t"), 1),
    (("short", "shortint", "signedshort", "signedshortint", "int16", "int16_t", "ushort",
      "unsignedshort", "unsignedshortint", "uint16", "uint16_t"), 2),
    (("int", "signedint", "int32", "int32_t", "uint", "unsignedint", "uint32", "uint32_t"), 4),
    (("longlong", "longlongint", "signedlonglong", "signedlonglongint", "int64", "int64_t",
      "ulonglong", "unsignedlonglong", "unsignedlonglongint", "uint64", "uint64_t"), 8),
    (("float",), 4),
    (("double",), 8),
):
    for _name in _names:
        _NRRD_TYPE_BYTES[_name] = _size

_META_TYPE_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}


def check_image_file_complete(path) -> None:
    """Refuse an image file whose pixel data is shorter than its header declares or whose
    compressed stream is cut off or fails its checksum. Raises InputError (one line)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        _check_nifti(path, compressed=True)
    elif name.endswith(".nii"):
        _check_nifti(path, compressed=False)
    elif name.endswith((".nrrd", ".nhdr")):
        _check_nrrd(path)
    elif name.endswith((".mha", ".mhd")):
        _check_metaimage(path)


# --- streams --------------------------------------------------------------------------------------
class _Incomplete(Exception):
    """A stream ended early or failed its checksum; the message says which."""


def _inflated_size(path: Path, offset: int, kind: str) -> int:
    """Bytes a compressed stream starting at `offset` inflates to, read to its end so that its end
    marker and checksum are verified. kind: 'zlib' (zlib or gzip header) or 'bzip2'. Concatenated
    members (bgzip, pbzip2) are followed; trailing zero padding is allowed."""
    total = 0
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(_CHUNK)
        while True:  # one compressed member per pass
            decoder = zlib.decompressobj(zlib.MAX_WBITS | 32) if kind == "zlib" else bz2.BZ2Decompressor()
            while not decoder.eof:
                if not data:
                    data = f.read(_CHUNK)
                    if not data:
                        raise _Incomplete("its compressed data ends before the end-of-stream marker")
                try:
                    total += len(decoder.decompress(data))
                except (zlib.error, OSError, EOFError, ValueError) as e:
                    raise _Incomplete(f"its compressed data is damaged ({e})") from None
                data = b""
            data = decoder.unused_data or f.read(_CHUNK)
            if not data.strip(b"\0"):
                while data:
                    if data.strip(b"\0"):
                        raise _Incomplete("unexpected data follows its compressed stream")
                    data = f.read(_CHUNK)
                return total


def _refuse(path: Path, why: str) -> None:
    raise InputError(f"{path.name}: {why}; {_REEXPORT}")


def _require(path: Path, have: int, need: int, what: str = "pixel data") -> None:
    if have < need:
        _refuse(path, f"its {what} holds {have} of the {need} bytes its header declares")


# --- NIfTI ----------------------------------------------------------------------------------------
def _nifti_expected(header: bytes) -> int | None:
    """vox_offset + voxel bytes from a NIfTI-1 or NIfTI-2 header, or None when it is neither."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            vox_offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            vox_offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7 or bitpix <= 0:
        return None
    voxels = 1
    for d in dims[1:ndim + 1]:
        voxels *= max(int(d), 1)
    return max(vox_offset, 348) + voxels * bitpix // 8


def _check_nifti(path: Path, compressed: bool) -> None:
    if compressed:
        try:
            with open(path, "rb") as f:
                header = zlib.decompressobj(zlib.MAX_WBITS | 32).decompress(f.read(4096), 540)
        except zlib.error:
            return  # not gzip at all: the image reader says so
        expected = _nifti_expected(header)
        try:
            size = _inflated_size(path, 0, "zlib")
        except _Incomplete as e:
            _refuse(path, str(e))
    else:
        with open(path, "rb") as f:
            header = f.read(540)
        expected = _nifti_expected(header)
        size = path.stat().st_size
    if expected is not None:
        _require(path, size, expected, "data")


# --- NRRD -----------------------------------------------------------------------------------------
def _nrrd_header(path: Path) -> tuple[dict[str, str], int]:
    """Fields (lower-case names) and the byte length of the header including its blank line."""
    fields, length = {}, 0
    with open(path, "rb") as f:
        first = f.readline()
        length += len(first)
        if not first.startswith(b"NRRD"):
            return {}, 0
        while True:
            line = f.readline()
            if not line:
                break
            length += len(line)
            text = line.decode("latin-1").rstrip("\r\n")
            if not text.strip():
                break
            if text.startswith("#") or ":=" in text:
                continue
            key, colon, value = text.partition(":")
            if colon:
                fields[key.strip().lower()] = value.strip()
    return fields, length


def _check_nrrd(path: Path) -> None:
    fields, header_length = _nrrd_header(path)
    type_bytes = _NRRD_TYPE_BYTES.get(fields.get("type", "").replace(" ", "").lower())
    try:
        voxels = 1
        for size in fields.get("sizes", "").split():
            voxels *= int(size)
        byte_skip = int(fields.get("byte skip", fields.get("byteskip", "0")))
    except ValueError:
        return
    if not fields.get("sizes") or type_bytes is None or int(fields.get("line skip", "0") or 0):
        return  # block types, line skips: left to the reader
    expected = voxels * type_bytes
    data_file = fields.get("data file") or fields.get("datafile")
    if data_file:
        if data_file.split()[0] == "LIST" or "%" in data_file or len(data_file.split()) > 1:
            return  # several data files
        data_path = path.parent / data_file
        if not data_path.is_file():
            raise InputError(f"{path.name}: its data file {data_file} does not exist; copy it beside the header")
        offset = 0
    else:
        data_path, offset = path, header_length
    encoding = fields.get("encoding", "raw").lower()
    if encoding == "raw":
        available = data_path.stat().st_size - offset
        _require(path, available, expected + max(byte_skip, 0))
    elif encoding in ("gzip", "gz", "bzip2", "bz2"):
        try:
            size = _inflated_size(data_path, offset, "zlib" if encoding in ("gzip", "gz") else "bzip2")
        except _Incomplete as e:
            _refuse(path, str(e))
        _require(path, size, expected + max(byte_skip, 0))


# --- MetaImage ------------------------------------------------------------------------------------
def _check_metaimage(path: Path) -> None:
    fields, header_length = {}, 0
    with open(path, "rb") as f:
        for line in iter(f.readline, b""):
            header_length += len(line)
            key, equals, value = line.decode("latin-1").partition("=")
            if not equals:
                return  # not a MetaImage header: the reader says so
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
    type_bytes = _META_TYPE_BYTES.get(fields.get("ElementType", ""))
    data_file = fields.get("ElementDataFile", "")
    try:
        voxels = 1
        for size in fields.get("DimSize", "").split():
            voxels *= int(size)
        voxels *= int(fields.get("ElementNumberOfChannels", "1"))
        header_size = int(fields.get("HeaderSize", "0"))
    except ValueError:
        return
    if type_bytes is None or not data_file or data_file.split()[0] == "LIST" or "%" in data_file:
        return
    expected = voxels * type_bytes
    if data_file == "LOCAL":
        data_path, offset = path, header_length
    else:
        data_path, offset = path.parent / data_file, 0
        if not data_path.is_file():
            raise InputError(f"{path.name}: its data file {data_file} does not exist; copy it beside the header")
    if fields.get("CompressedData", "False").lower() == "true":
        try:
            size = _inflated_size(data_path, offset, "zlib")
        except _Incomplete as e:
            _refuse(path, str(e))
        _require(path, size, expected)
    else:
        available = data_path.stat().st_size - offset
        _require(path, available, expected + max(header_size, 0))


# --- DICOM ----------------------------------------------------------------------------------------
UNREADABLE_DICOM = "it cannot be read as DICOM to its end"


def dicom_pixel_data_problem(header, file_size: int, read_warnings=()) -> str | None:
    """Why a DICOM instance's pixel data is incomplete, or None; from its header pass alone.

    Args:
        header: the pydicom Dataset as read with its pixel data deferred (dicom_headers.py).
        file_size: the file's size in bytes (a deferred value may claim more than the file holds).
        read_warnings: the warning lines pydicom gave while reading it.
    """
    import pydicom

    if any("End of file" in w or "truncat" in w.lower() for w in read_warnings):
        return "its pixel data ends before its delimiter"
    if "PixelData" not in header:
        return None
    element = header.get_item("PixelData", keep_deferred=True)  # never loads the pixels
    meta = getattr(header, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) or pydicom.uid.ImplicitVRLittleEndian
    if syntax.is_compressed:
        return None  # encapsulated: its end is its delimiter, checked while reading
    try:
        expected = (int(header.Rows) * int(header.Columns) * int(header.get("SamplesPerPixel", 1))
                    * int(header.get("NumberOfFrames", 1) or 1) * int(header.BitsAllocated) // 8)
    except (AttributeError, TypeError, ValueError):
        return None
    if element.value is not None:
        have = len(element.value)
    else:  # skipped: what the file holds from where the value starts
        have = max(0, min(int(element.length), file_size - int(element.value_tell)))
    if have < expected:
        return f"its pixel data holds {have} of the {expected} bytes its header declares"
    return None


def check_dicom_instances(instances, image_sop_classes=()) -> None:
    """Refuse the first incomplete DICOM instance. Raises InputError.

    instances: what the header pass read (dicom_headers.DicomInstance: path, problem,
    has_pixel_data, sop_class). image_sop_classes: SOP classes that must carry pixel data (the
    series' own); a file of such a class without pixel data was cut inside its header. Files of
    other classes (a DICOMDIR, a structured report) need none."""
    for instance in instances:
        if instance.problem:
            _refuse(instance.path, instance.problem)
        if not instance.has_pixel_data and instance.sop_class in image_sop_classes:
            _refuse(instance.path, "it ends before its pixel data")
