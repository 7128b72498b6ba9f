"""Readers: every CT and seed format lands in RAS with the right geometry; bad input is refused
with a one-line InputError. Uses the real CT in ../shared/data/ct when present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from LymphNodeMTLLib.core.case import Seed
from LymphNodeMTLLib.core.errors import InputError
from LymphNodeMTLLib.core.geometry import VolumeGeometry
from LymphNodeMTLLib.io.seed_reader import read_seeds, write_markups_json
from LymphNodeMTLLib.io.volume_reader import read_volume, write_volume
from seed_csv import write_seeds_csv

CT_DIR = Path(__file__).resolve().parents[2] / "shared/data/ct"
DICOM_SERIES = CT_DIR / "dicom_abdomen_series"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"  # SOP Class UID; GDCM refuses to write without one


def _rotation(z_deg: float, x_deg: float) -> np.ndarray:
    """Rotation about z then x: a non-axial direction for test volumes."""
    a, b = np.radians(z_deg), np.radians(x_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rx @ rz


def _oblique_flipped_geometry(shape_kji=(5, 6, 7)) -> VolumeGeometry:
    """Oblique, anisotropic, with a flipped j axis (negative determinant)."""
    direction = _rotation(20, 10) @ np.diag([1.0, -1.0, 1.0])
    m = np.eye(4)
    m[:3, :3] = direction * np.array([0.7, 0.9, 2.5])[None, :]
    m[:3, 3] = [-12.5, 30.25, 101.0]
    return VolumeGeometry(m, shape_kji)


def _hu_volume(shape_kji) -> np.ndarray:
    return np.random.default_rng(0).integers(-1024, 1500, size=shape_kji).astype(np.int16)


def _assert_one_line(error: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(error.value)


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real CT not available: {path}")
    return path


# --- volumes: formats and geometry ----------------------------------------------------------------
@pytest.mark.parametrize("extension", [".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd"])
def test_every_format_keeps_oblique_flipped_geometry(tmp_path, extension):
    geometry = _oblique_flipped_geometry()
    image = _hu_volume(geometry.shape_kji)
    path = tmp_path / f"ct{extension}"
    write_volume(path, image, geometry)

    array, read_geometry, metadata = read_volume(path)

    assert array.dtype == np.float32 and array.shape == geometry.shape_kji
    np.testing.assert_array_equal(array, image)
    # NIfTI stores the matrix as float32 (qform quaternion), hence the tolerance.
    np.testing.assert_allclose(read_geometry.ijk_to_ras, geometry.ijk_to_ras, atol=1e-4)
    assert metadata == {}


def test_write_volume_stores_masks_as_uint8(tmp_path):
    geometry = _oblique_flipped_geometry((3, 4, 5))
    mask = np.zeros(geometry.shape_kji, dtype=bool)
    mask[1, 2, 3] = True
    write_volume(tmp_path / "mask.nrrd", mask, geometry)
    assert sitk.ReadImage(str(tmp_path / "mask.nrrd")).GetPixelID() == sitk.sitkUInt8


# --- volumes: refusals ----------------------------------------------------------------------------
def _write_sitk(path: Path, image: sitk.Image) -> Path:
    sitk.WriteImage(image, str(path))
    return path


BAD_VOLUMES = {
    "missing": (lambda d: d / "absent.nrrd", "not found"),
    "corrupt nrrd": (
        lambda d: (d / "bad.nrrd").write_bytes(b"NRRD0004\ngarbage\n") and d / "bad.nrrd",
        "could not read",
    ),
    "corrupt nifti": (
        lambda d: (d / "bad.nii.gz").write_bytes(b"\x00" * 400) and d / "bad.nii.gz",
        "could not read",
    ),
    "unsupported extension": (
        lambda d: (d / "ct.png").write_bytes(b"\x89PNG") and d / "ct.png",
        "unsupported CT file type",
    ),
    "single dicom file": (
        lambda d: (d / "slice.dcm").write_bytes(b"x") and d / "slice.dcm",
        "pass the folder",
    ),
    "2-D": (lambda d: _write_sitk(d / "a.nrrd", sitk.Image([8, 8], sitk.sitkInt16)), "2-D"),
    "4-D": (lambda d: _write_sitk(d / "a.mha", sitk.Image([4, 4, 4, 3], sitk.sitkInt16)), "4-D"),
    "vector": (
        lambda d: _write_sitk(d / "a.nrrd", sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3)),
        "3 values per voxel",
    ),
    "single slice": (
        lambda d: _write_sitk(d / "a.nii.gz", sitk.Image([8, 8, 1], sitk.sitkInt16)),
        "single slice",
    ),
    "empty dicom folder": (lambda d: d, "no DICOM series"),
    "folder without dicom": (
        lambda d: (d / "notes.txt").write_text("hello") and d,
        "no DICOM series",
    ),
}


@pytest.mark.parametrize("case", list(BAD_VOLUMES))
def test_bad_volume_is_refused_with_one_line(tmp_path, case):
    make, message = BAD_VOLUMES[case]
    path = make(tmp_path)
    with pytest.raises(InputError, match=message) as error:
        read_volume(path)
    _assert_one_line(error)


# --- volumes: real CT -----------------------------------------------------------------------------
def _assert_plausible_ct(array: np.ndarray) -> None:
    assert -1100 <= array.min() <= -1000  # air
    soft_tissue = np.mean((array > 0) & (array < 80))
    assert soft_tissue > 0.01


@pytest.mark.parametrize(
    "name, shape_kji, spacing",
    [
        ("chest_noncontrast_lung1.nrrd", (48, 512, 512), (0.5703125, 0.5703125, 5.0)),
        ("mediastinum_contrast_crop.nii.gz", (112, 102, 122), (1.5, 1.5, 1.5)),
    ],
)
def test_real_ct_files_load_as_hu(name, shape_kji, spacing):
    array, geometry, _ = read_volume(_require(CT_DIR / name))
    assert array.shape == shape_kji == geometry.shape_kji
    np.testing.assert_allclose(geometry.spacing, spacing, rtol=1e-5)
    _assert_plausible_ct(array)


def test_real_dicom_series_loads_as_hu_with_metadata():
    array, geometry, metadata = read_volume(_require(DICOM_SERIES))
    assert array.shape == (20, 512, 512)
    np.testing.assert_allclose(geometry.spacing, [0.9765625, 0.9765625, 2.0], rtol=1e-5)
    # Axial, first slice at LPS (-249.5, -437.5, -804.5): RAS flips the first two axes.
    np.testing.assert_allclose(geometry.ijk_to_ras[:3, 3], [249.51171875, 437.51171875, -804.5])
    np.testing.assert_allclose(geometry.direction_ras, np.diag([-1.0, -1.0, 1.0]), atol=1e-6)
    assert metadata["Modality"] == "CT"
    assert metadata["SeriesDescription"] == "CT Body 3.0"
    _assert_plausible_ct(array)


# --- DICOM: several series, tilt, uneven spacing -----------------------------------------------
SERIES_UIDS = ("1.2.826.0.1.3680043.2.1125.1.1", "1.2.826.0.1.3680043.2.1125.1.2")


@pytest.fixture(scope="module")
def two_series_folder(tmp_path_factory):
    """The real series split in two: its files rewritten with one of two SeriesInstanceUIDs."""
    files = sorted(_require(DICOM_SERIES).iterdir())
    folder = tmp_path_factory.mktemp("two_series")
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for n, file in enumerate(files):
        half = n * 2 // len(files)
        image = sitk.ReadImage(str(file))
        image.SetMetaData("0020|000e", SERIES_UIDS[half])
        image.SetMetaData("0008|103e", f"half {half + 1}")
        image.SetMetaData("0008|0016", CT_IMAGE_STORAGE)  # anonymisation emptied these two
        image.SetMetaData("0008|0018", f"1.2.826.0.1.3680043.2.1125.2.{n + 1}")
        writer.SetFileName(str(folder / f"{n:03d}.dcm"))
        writer.Execute(image)
    return folder


def test_folder_with_two_series_lists_them(two_series_folder):
    with pytest.raises(InputError) as error:
        read_volume(two_series_folder)
    _assert_one_line(error)
    message = str(error.value)
    assert "2 DICOM series" in message
    for n, uid in enumerate(SERIES_UIDS, start=1):
        assert f'{uid} ("half {n}", 10 slices)' in message


@pytest.mark.parametrize("uid", SERIES_UIDS)
def test_series_uid_picks_one_series(two_series_folder, uid):
    array, geometry, metadata = read_volume(two_series_folder, series_uid=uid)
    assert array.shape == (10, 512, 512)
    np.testing.assert_allclose(geometry.spacing, [0.9765625, 0.9765625, 2.0], rtol=1e-5)
    assert metadata["SeriesInstanceUID"] == uid
    assert -1024 <= array.min() <= -1000  # the rewrite kept the HU scaling


def test_unknown_series_uid_is_refused(two_series_folder):
    with pytest.raises(InputError, match="1.2.3 is not in folder") as error:
        read_volume(two_series_folder, series_uid="1.2.3")
    _assert_one_line(error)
    assert SERIES_UIDS[0] in str(error.value)


def _write_dicom_series(folder: Path, positions_lps, direction_lps, pixels_kji) -> Path:
    """A synthetic CT series: slice k at positions_lps[k] (GDCM writes the slice origin as
    ImagePositionPatient and the first two direction columns as ImageOrientationPatient)."""
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k, position in enumerate(positions_lps):
        image = sitk.GetImageFromArray(pixels_kji[k : k + 1])
        image.SetSpacing((0.7, 0.9, 1.0))
        image.SetDirection(tuple(np.asarray(direction_lps, dtype=float).flatten()))
        image.SetOrigin(tuple(float(v) for v in position))
        tags = {
            "0008|0060": "CT",
            "0008|0016": CT_IMAGE_STORAGE,
            "0008|0018": f"1.2.826.0.1.3680043.2.1125.3.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.4",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.5",
            "0020|0013": str(k + 1),
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{len(positions_lps) - k:02d}.dcm"))  # not in order
        writer.Execute(image)
    return folder


def _stack(direction_lps, steps_along_normal, in_plane_drift=(0.0, 0.0)):
    """Slice positions (LPS): cumulative steps along the third direction column, plus an
    in-plane drift per slice along the first two columns (what a gantry tilt produces)."""
    direction = np.asarray(direction_lps, dtype=float)
    along = np.concatenate([[0.0], np.cumsum(steps_along_normal)])
    k = np.arange(len(along))[:, None]
    drift = k * (in_plane_drift[0] * direction[:, 0] + in_plane_drift[1] * direction[:, 1])
    return np.array([10.0, -20.0, 30.0]) + along[:, None] * direction[:, 2] + drift


def test_oblique_dicom_series_reads_with_its_geometry(tmp_path):
    direction = _rotation(20, 10)
    pixels = _hu_volume((5, 6, 4))
    positions = _stack(direction, [2.5] * 4)
    folder = _write_dicom_series(tmp_path / "oblique", positions, direction, pixels)

    array, geometry, metadata = read_volume(folder)

    np.testing.assert_array_equal(array, pixels)
    expected = VolumeGeometry.from_lps(positions[0], (0.7, 0.9, 2.5), direction, pixels.shape)
    np.testing.assert_allclose(geometry.ijk_to_ras, expected.ijk_to_ras, atol=1e-4)
    assert metadata["SeriesInstanceUID"] == "1.2.826.0.1.3680043.2.1125.5"


@pytest.mark.parametrize(
    "steps, drift, message",
    [
        ([2.0] * 4, (0.0, 0.5), "gantry-tilted"),  # 14 degrees tilt
        ([2.0, 2.0, 4.0, 2.0], (0.0, 0.0), "non-uniform slice spacing"),  # a missing slice
        ([2.0, 0.0, 2.0, 2.0], (0.0, 0.0), "same position"),  # two phases interleaved
    ],
)
def test_irregular_dicom_series_is_refused(tmp_path, steps, drift, message):
    direction = np.eye(3)
    positions = _stack(direction, steps, drift)
    pixels = _hu_volume((len(positions), 6, 4))
    folder = _write_dicom_series(tmp_path / "irregular", positions, direction, pixels)
    with pytest.raises(InputError, match=message) as error:
        read_volume(folder)
    _assert_one_line(error)


def test_single_slice_dicom_series_is_refused(tmp_path):
    pixels = _hu_volume((1, 6, 4))
    folder = _write_dicom_series(tmp_path / "one", _stack(np.eye(3), []), np.eye(3), pixels)
    with pytest.raises(InputError, match="only 1 slice") as error:
        read_volume(folder)
    _assert_one_line(error)


# --- seeds ----------------------------------------------------------------------------------------
SEEDS = [Seed("4R-1", (12.5, -30.0, 101.25)), Seed("7", (-3.0, 44.5, -8.0))]


def _assert_same_seeds(read: list[Seed], expected: list[Seed]) -> None:
    assert [s.node_id for s in read] == [s.node_id for s in expected]
    np.testing.assert_allclose([s.ras for s in read], [s.ras for s in expected], atol=1e-9)


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_markups_in_lps_and_ras_give_the_same_ras_seeds(tmp_path, system):
    path = tmp_path / "seeds.mrk.json"
    write_markups_json(path, SEEDS, coordinate_system=system)
    assert json.loads(path.read_text())["markups"][0]["coordinateSystem"] == system
    _assert_same_seeds(read_seeds(path), SEEDS)


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_csv_in_lps_and_ras_give_the_same_ras_seeds(tmp_path, system):
    path = tmp_path / "seeds.csv"
    write_seeds_csv(path, SEEDS, coordinate_system=system)
    _assert_same_seeds(read_seeds(path), SEEDS)


def test_slicer_markups_defaults_lps_and_falls_back_to_id_then_index(tmp_path):
    """As Slicer saves it: several points, an unplaced one, empty labels."""
    points = [
        {"id": "a", "label": "1R", "position": [1.0, 2.0, 3.0], "positionStatus": "defined"},
        {"id": "b", "label": "", "position": [4.0, 5.0, 6.0]},
        {"id": "c", "label": "x", "position": [0.0, 0.0, 0.0], "positionStatus": "undefined"},
        {"id": "", "label": "", "position": [7.0, 8.0, 9.0]},
    ]
    document = {"markups": [{"type": "Fiducial", "controlPoints": points}]}  # no system: LPS
    path = tmp_path / "seeds.mrk.json"
    path.write_text(json.dumps(document))
    expected = [Seed("1R", (-1, -2, 3)), Seed("b", (-4, -5, 6)), Seed("3", (-7, -8, 9))]
    _assert_same_seeds(read_seeds(path), expected)


def test_csv_header_is_case_and_whitespace_tolerant(tmp_path):
    path = tmp_path / "seeds.csv"
    path.write_text("\ufeff ID , L,p ,S \n\nn1, 1, 2 ,3,\n", encoding="utf-8")
    _assert_same_seeds(read_seeds(path), [Seed("n1", (-1.0, -2.0, 3.0))])


def _markups_text(position, system="LPS", kind="Fiducial") -> str:
    point = {"id": "1", "label": "n1", "position": position}
    markup = {"type": kind, "coordinateSystem": system, "controlPoints": [point]}
    return json.dumps({"markups": [markup]})


BAD_SEEDS = {
    "missing": ("absent.csv", None, "not found"),
    "unknown extension": ("seeds.txt", "id,r,a,s\n1,0,0,0\n", "unsupported seed file"),
    "empty csv": ("seeds.csv", "", "empty"),
    "empty json": ("seeds.mrk.json", "  \n", "empty"),
    "header only": ("seeds.csv", "id,r,a,s\n", "no points"),
    "wrong header": ("seeds.csv", "id,x,y,z\n1,0,0,0\n", "expected exactly id,r,a,s"),
    "no header": ("seeds.csv", "1,0,0,0\n", "expected exactly id,r,a,s"),
    "non-numeric csv": ("seeds.csv", "id,r,a,s\n1,0,0,0\n2,0,abc,0\n", "line 3 .* 'abc'"),
    "nan csv": ("seeds.csv", "id,r,a,s\n1,0,nan,0\n", "line 2 .* 'nan'"),
    "too few columns": ("seeds.csv", "id,r,a,s\n1,0,0\n", "line 2 .* 3 values"),
    "not utf-8": ("seeds.csv", b"id,r,a,s\n\xff\xfe,0,0,0\n", "not UTF-8"),
    "bad json": ("seeds.mrk.json", '{"markups": [', "not valid JSON"),
    "not markups": ("seeds.mrk.json", "[1, 2]", "not a 3D Slicer markups file"),
    "no points": ("seeds.mrk.json", '{"markups": [{"type": "Fiducial"}]}', "no points"),
    "only a curve": ("seeds.mrk.json", _markups_text([0, 0, 0], kind="Curve"), "no point list"),
    "non-numeric json": ("seeds.mrk.json", _markups_text([0, "a", 0]), "seed n1 .* invalid"),
    "short position": ("seeds.mrk.json", _markups_text([0, 0]), "seed n1 .* invalid"),
    "unknown system": ("seeds.mrk.json", _markups_text([0, 0, 0], system="XYZ"), "'XYZ'"),
}


@pytest.mark.parametrize("case", list(BAD_SEEDS))
def test_bad_seed_file_is_refused_with_one_line(tmp_path, case):
    name, content, message = BAD_SEEDS[case]
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message) as error:
        read_seeds(path)
    _assert_one_line(error)
