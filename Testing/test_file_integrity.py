"""Image files and DICOM instances are checked for completeness before use (io/file_integrity.py):
a cut-off copy or a damaged compressed stream is refused with one line, never read with its
missing voxels as 0 HU."""

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from ct_samples import body_ct, body_geometry, write_case, write_dicom_series
from LymphNodeMTLLib.commands.cli import main
from LymphNodeMTLLib.core.errors import InputError
from LymphNodeMTLLib.io.file_integrity import check_image_file_complete
from LymphNodeMTLLib.io.volume_reader import read_volume, write_volume

# (file name, compressed, the file that holds the pixels: the image itself or a detached one)
FORMATS = [
    ("ct.nii.gz", True, None),
    ("ct.nii", False, None),
    ("ct.nrrd", True, None),
    ("ct.nrrd", False, None),
    ("ct.nhdr", False, "ct.raw"),
    ("ct.nhdr", True, "ct.raw.gz"),
    ("ct.mha", True, None),
    ("ct.mha", False, None),
    ("ct.mhd", False, "ct.raw"),
    ("ct.mhd", True, "ct.zraw"),
]


@pytest.fixture(scope="module")
def image():
    return body_ct(np.random.default_rng(7)).astype(np.int16)


def write(folder: Path, name: str, compressed: bool, array) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sitk_image = sitk.GetImageFromArray(array)
    body_geometry().apply_to_sitk(sitk_image)
    sitk.WriteImage(sitk_image, str(folder / name), useCompression=compressed)
    return folder / name


def pixel_file(path: Path, detached) -> Path:
    return path.with_name(detached) if detached else path


def refused(path, fragment):
    with pytest.raises(InputError) as error:
        read_volume(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(Path(path).name) and fragment in message, message
    return message


@pytest.mark.parametrize("name, compressed, detached", FORMATS, ids=[f"{n}-{'gz' if c else 'raw'}" for n, c, _ in FORMATS])
def test_complete_files_read_back_exactly(tmp_path, image, name, compressed, detached):
    path = write(tmp_path, name, compressed, image)
    assert pixel_file(path, detached).is_file()
    check_image_file_complete(path)
    assert np.array_equal(read_volume(path)[0], image.astype(np.float32))


@pytest.mark.parametrize("cut", [1, 4096, 0.5])
@pytest.mark.parametrize("name, compressed, detached", FORMATS, ids=[f"{n}-{'gz' if c else 'raw'}" for n, c, _ in FORMATS])
def test_truncated_files_are_refused(tmp_path, image, name, compressed, detached, cut):
    """Cut 1 byte, 4 KiB, or half of the pixel data off the end (an interrupted copy)."""
    path = write(tmp_path, name, compressed, image)
    target = pixel_file(path, detached)
    data = target.read_bytes()
    keep = len(data) - (int(len(data) * cut) if isinstance(cut, float) else cut)
    target.write_bytes(data[:keep])
    refused(path, "compressed data ends before" if compressed else "bytes its header declares")


@pytest.mark.parametrize("name, compressed, detached", [f for f in FORMATS if f[1]], ids=lambda v: str(v))
def test_a_flipped_byte_in_compressed_data_is_refused(tmp_path, image, name, compressed, detached):
    path = write(tmp_path, name, compressed, image)
    target = pixel_file(path, detached)
    data = bytearray(target.read_bytes())
    data[-12] ^= 0x5A  # inside the deflate stream or its checksum trailer
    target.write_bytes(bytes(data))
    refused(path, "compressed data")


def test_a_missing_detached_data_file_is_refused(tmp_path, image):
    path = write(tmp_path, "ct.nhdr", False, image)
    (tmp_path / "ct.raw").unlink()
    refused(path, "data file ct.raw does not exist")


def test_multi_member_gzip_and_zero_padding_are_accepted(tmp_path, image):
    """bgzip writes several gzip members; some copies pad the end with zeros. Both are complete."""
    plain = write(tmp_path, "ct.nii", False, image).read_bytes()
    half = len(plain) // 2
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(gzip.compress(plain[:half]) + gzip.compress(plain[half:]) + b"\0" * 512)
    assert np.array_equal(read_volume(multi)[0], image.astype(np.float32))


def test_garbage_after_the_gzip_stream_is_refused(tmp_path, image):
    path = write(tmp_path, "ct.nii.gz", True, image)
    path.write_bytes(path.read_bytes() + b"\0\0partial copy of something else")
    refused(path, "compressed data")


def test_a_nifti_whose_header_claims_more_voxels_is_refused(tmp_path, image):
    path = write(tmp_path, "ct.nii", False, image)
    data = bytearray(path.read_bytes())
    data[42:44] = (int.from_bytes(data[42:44], "little") + 3).to_bytes(2, "little")  # dim[1] += 3
    path.write_bytes(bytes(data))
    with pytest.raises(InputError) as error:
        read_volume(path)
    assert "\n" not in str(error.value) and "ct.nii" in str(error.value)


# --- DICOM ------------------------------------------------------------------------------------------
@pytest.fixture
def series(tmp_path, image):
    return write_dicom_series(tmp_path / "series", image[:6])


def test_a_complete_dicom_series_reads(series, image):
    assert np.array_equal(read_volume(series)[0], image[:6].astype(np.float32))


@pytest.mark.parametrize("which, cut", [(3, 100), (0, 2000), (5, 1)])
def test_a_dicom_instance_with_cut_pixel_data_is_refused(series, which, cut):
    """A middle, the first and the last slice cut short: the last two leave no gap in the stack."""
    target = series / f"im{which:02d}.dcm"
    target.write_bytes(target.read_bytes()[:-cut])
    with pytest.raises(InputError) as error:
        read_volume(series)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"im{which:02d}.dcm"), message


def test_a_dicom_instance_cut_inside_its_header_is_refused(series):
    """GDCM leaves such a file out of the series; the folder is refused instead of read short."""
    target = series / "im05.dcm"
    target.write_bytes(target.read_bytes()[:400])
    with pytest.raises(InputError) as error:
        read_volume(series)
    assert "im05.dcm" in str(error.value) and "\n" not in str(error.value)


# --- through the CLI ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nrrd", "ct.mha"])
def test_cli_refuses_a_truncated_ct_and_writes_nothing(tmp_path, capsys, name):
    ct, seeds = write_case(tmp_path / "in", body_ct(np.random.default_rng(3)), body_geometry(), name)
    ct.write_bytes(ct.read_bytes()[: ct.stat().st_size * 2 // 3])
    out = tmp_path / "out"
    code = main(["predict", "--volume", str(ct), "--seeds", str(seeds), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"lymphnode-mtl: error: {name}: "), err
    assert "copy or export it again" in lines[0]
    assert not out.exists()


def test_cli_refuses_a_truncated_dicom_series(tmp_path, capsys, image):
    folder = write_dicom_series(tmp_path / "dicom", image[:5])
    (folder / "im02.dcm").write_bytes((folder / "im02.dcm").read_bytes()[:-700])
    seeds = tmp_path / "seeds.csv"
    seeds.write_text("id,l,p,s\n1,3.0,5.0,44.0\n")
    out = tmp_path / "out"
    code = main(["predict", "--volume", str(folder), "--seeds", str(seeds), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "im02.dcm" in err
    assert not out.exists()


def test_a_truncated_training_image_is_refused_when_the_case_is_read(tmp_path, image):
    """Training and evaluation read CTs through the same reader, so the same check holds."""
    path = tmp_path / "case.nii.gz"
    write_volume(path, image.astype(np.float32), body_geometry())
    shutil.copy(path, tmp_path / "copy.nii.gz")
    (tmp_path / "copy.nii.gz").write_bytes(path.read_bytes()[:-20])
    read_volume(path)
    refused(tmp_path / "copy.nii.gz", "compressed data ends before")
