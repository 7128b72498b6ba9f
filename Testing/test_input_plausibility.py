"""A CT must look like a CT in HU before any network sees it (core/ct_plausibility.py), and each
node gets exactly one seed: what is refused, with which one line, and that nothing is written."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from ct_samples import body_ct, body_geometry, centre_ras, write_case
from LymphNodeMTLLib.commands.cli import main
from LymphNodeMTLLib.core.case import Case, Seed
from LymphNodeMTLLib.core.ct_plausibility import check_ct_plausibility
from LymphNodeMTLLib.core.errors import InputError
from LymphNodeMTLLib.core.geometry import VolumeGeometry
from LymphNodeMTLLib.phantoms.case_generator import generate_phantom_case

OUTPUTS = ("nodes.seg.nrrd", "nodes.csv", "run.json")


@pytest.fixture
def rng():
    return np.random.default_rng(20261201)


def refused(image, geometry, fragment, modality=None):
    with pytest.raises(InputError) as error:
        check_ct_plausibility(image, geometry, modality, "scan.nrrd", warn=pytest.fail)
    message = str(error.value)
    assert "\n" not in message and fragment in message, message
    assert message.startswith("scan.nrrd")
    return message


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def expect_cli_refusal(argv, capsys, out: Path, fragment: str) -> str:
    code, _, err = run_cli(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("lymphnode-mtl: error: "), err
    assert fragment in lines[0], lines[0]
    assert not out.exists(), "a refused run must not even create --out"
    return lines[0]


def predict_args(ct, seeds, out):
    return ["predict", "--volume", ct, "--seeds", seeds, "--out", out, "--device", "cpu"]


# --- accepted ---------------------------------------------------------------------------------------
def test_a_body_ct_passes_unchanged(rng):
    image = body_ct(rng)
    assert check_ct_plausibility(image, body_geometry(), "CT", warn=pytest.fail) is image


@pytest.mark.parametrize("seed", range(6))
def test_every_phantom_passes(seed):
    rng = np.random.default_rng(seed)
    fov = [None, (96, 96, 64), (48, 48, 40)][seed % 3]
    phantom = generate_phantom_case(rng, 2 + seed % 3, field_of_view_mm=fov)
    check_ct_plausibility(phantom.image, phantom.geometry, warn=pytest.fail)


def test_a_crop_without_air_passes(rng):
    """Cropped to the soft tissue around the nodes (a common export): fat and soft tissue, no air."""
    image = body_ct(rng)[:, 20:36, 22:38]
    geometry = body_geometry(shape_kji=image.shape)
    assert image.max() < 200 and image.min() > -500
    check_ct_plausibility(image, geometry, warn=pytest.fail)


def test_oblique_and_flipped_orthonormal_grids_pass(rng):
    c, s = np.cos(0.4), np.sin(0.4)
    for direction in ([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.diag([-1.0, 1.0, -1.0]), np.eye(3)[[1, 0, 2]]):
        check_ct_plausibility(body_ct(rng), body_geometry(direction=direction), warn=pytest.fail)


def test_window_rebuilt_ct_passes(rng):
    """A CT rebuilt from an 8-bit window: everything below the window reads as -1000, 256 levels."""
    image = body_ct(rng)
    low, high = -160.0, 240.0
    levels = np.round((np.clip(image, low, high) - low) / (high - low) * 255)
    rebuilt = np.where(image < low, -1000.0, low + levels * (high - low) / 255).astype(np.float32)
    check_ct_plausibility(rebuilt, body_geometry(), warn=pytest.fail)


# --- not CT in HU -----------------------------------------------------------------------------------
def test_constant_volumes_are_refused(rng):
    geometry = body_geometry()
    refused(np.zeros(geometry.shape_kji, np.float32), geometry, "same value (0)")
    refused(np.full(geometry.shape_kji, -1024.0, np.float32), geometry, "same value (-1024)")


def test_label_maps_and_segmentations_are_refused(rng):
    geometry = body_geometry()
    labels = (body_ct(rng) > 0).astype(np.float32) * 3 + (body_ct(rng) > -500)
    message = refused(labels, geometry, "label map or segmentation")
    assert "integer values" in message
    refused(np.eye(2)[rng.integers(0, 2, geometry.shape_kji)][..., 0].astype(np.float32), geometry,
            "label map")


def test_mr_pet_and_raw_intensities_are_refused(rng):
    geometry = body_geometry()
    ct = body_ct(rng)
    mr = np.clip((ct + 1000.0) * 0.6 + rng.normal(0, 20, ct.shape), 0, None)  # T1-like, all >= 0
    pet = np.abs(rng.gamma(1.5, 0.8, ct.shape)).astype(np.float32)  # SUV
    raw = np.clip(ct + 1024, 0, None).astype(np.uint16)  # stored values without the intercept
    for image in (mr, pet, raw):
        refused(image, geometry, "no value below 0")


def test_hu_like_scale_without_fat_or_soft_tissue_is_refused(rng):
    geometry = body_geometry()
    z_scored = ((body_ct(rng) + 300.0) / 400.0).astype(np.float32)  # a normalised image, ~-2 to 1
    refused(z_scored, geometry, "no fat (-190 to -30 HU)")
    bone_and_air = np.where(body_ct(rng) > -500, 900.0, -1000.0).astype(np.float32)
    refused(bone_and_air, geometry, "no fat")


@pytest.mark.parametrize("modality", ["MR", "PT", "NM", "us"])
def test_non_ct_modalities_are_refused(rng, modality):
    message = refused(body_ct(rng), body_geometry(), f"Modality {modality.upper()}", modality)
    assert "not CT" in message


# --- geometry -------------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing, fragment", [
    ((0.0008, 0.00075, 0.002), "below 0.05 mm"),  # metres taken for millimetres
    ((0.8, 0.75, 0.01), "below 0.05 mm"),
    ((0.8, 0.75, 35.0), "above 20 mm"),
])
def test_implausible_spacing_is_refused(rng, spacing, fragment):
    refused(body_ct(rng), body_geometry(spacing=spacing), fragment)


@pytest.mark.parametrize("shear", [0.05, 0.3, -0.6])
def test_sheared_axes_are_refused(rng, shear):
    direction = np.eye(3)
    direction[0, 1] = shear
    direction /= np.linalg.norm(direction, axis=0)
    refused(body_ct(rng), body_geometry(direction=direction), "sheared axes")


# --- non-finite voxels ------------------------------------------------------------------------------
def test_nan_outside_the_field_of_view_is_read_as_air_with_a_warning(rng):
    image = body_ct(rng, fov_circle=True)
    warnings = []
    fixed = check_ct_plausibility(image, body_geometry(), warn=warnings.append)
    assert np.isfinite(fixed).all()
    assert np.array_equal(fixed[np.isnan(image)], np.full(int(np.isnan(image).sum()), -1000.0, np.float32))
    assert np.array_equal(fixed[~np.isnan(image)], image[~np.isnan(image)])
    assert len(warnings) == 1 and f"{int(np.isnan(image).sum())} NaN or infinite" in warnings[0]
    assert "read as air" in warnings[0]


def test_infinite_voxels_in_the_air_around_the_body_are_read_as_air(rng):
    image = body_ct(rng)
    image[:, :3, :] = np.inf
    image[2, -1, -1] = -np.inf
    warnings = []
    fixed = check_ct_plausibility(image, body_geometry(), warn=warnings.append)
    assert fixed[0, 0, 0] == -1000.0 and fixed[2, -1, -1] == -1000.0 and len(warnings) == 1


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_inside_the_body_are_refused(rng, value):
    image = body_ct(rng, fov_circle=True)
    k, j, i = np.array(image.shape) // 2
    image[k, j - 1 : j + 2, i] = value
    message = refused(image, body_geometry(), "3 NaN or infinite voxel(s) inside the body")
    assert f"k={k}" in message


def test_an_all_nan_volume_is_refused(rng):
    geometry = body_geometry()
    refused(np.full(geometry.shape_kji, np.nan, np.float32), geometry, "no finite value")


# --- seeds ------------------------------------------------------------------------------------------
def _case(rng, seeds):
    geometry = body_geometry()
    return Case(body_ct(rng), geometry, seeds, {})


def test_two_seeds_in_one_voxel_are_refused(rng):
    centre = centre_ras(body_geometry())
    for offset in ([0.0, 0.0, 0.0], [0.2, -0.1, 0.3]):  # the same point, and within one voxel
        case = _case(rng, [Seed("4L", tuple(centre)), Seed("7", tuple(centre + [9, 0, 0])),
                           Seed("10R", tuple(centre + offset))])
        with pytest.raises(InputError) as error:
            case.validate_seeds()
        message = str(error.value)
        assert "\n" not in message and "seeds 4L and 10R are at the same position" in message


def test_seeds_one_voxel_apart_are_two_nodes(rng):
    centre = centre_ras(body_geometry())
    _case(rng, [Seed("a", tuple(centre)), Seed("b", tuple(centre + [0.8, 0.0, 0.0]))]).validate_seeds()


def test_a_seed_set_is_checked_once_and_again_when_it_changes(rng, monkeypatch):
    centre = centre_ras(body_geometry())
    case = _case(rng, [Seed("a", tuple(centre)), Seed("b", tuple(centre + [5.0, 0.0, 0.0]))])
    checks = []
    original = Case._refuse_shared_voxels
    monkeypatch.setattr(Case, "_refuse_shared_voxels", lambda self: checks.append(1) or original(self))
    case.validate_seeds()
    case.validate_seeds()  # what the engine does with a Case validated where it entered the process
    assert len(checks) == 1
    case.seeds.append(Seed("a", tuple(centre + [0.0, 9.0, 0.0])))  # changed after it was accepted
    with pytest.raises(InputError, match="duplicate seed id"):
        case.validate_seeds()
    case.seeds[-1] = Seed("c", (500.0, 0.0, 0.0))
    with pytest.raises(InputError, match="outside the CT"):
        case.validate_seeds()


def test_the_engine_refuses_the_seeds_of_a_case_nobody_validated(rng):
    from LymphNodeMTLLib.inference.engine import NodeEngine

    centre = centre_ras(body_geometry())
    case = _case(rng, [Seed("a", tuple(centre)), Seed("a", tuple(centre + [9.0, 0.0, 0.0]))])
    with pytest.raises(InputError, match="duplicate seed id"):
        NodeEngine(device="cpu").predict(case)


def test_predict_checks_the_seeds_once_per_run(rng, tmp_path, monkeypatch):
    from LymphNodeMTLLib.commands.predict import predict_to_folder

    geometry = body_geometry()
    ct, seeds = write_case(tmp_path, body_ct(rng), geometry)
    checks = []
    original = Case._refuse_shared_voxels
    monkeypatch.setattr(Case, "_refuse_shared_voxels", lambda self: checks.append(1) or original(self))
    predict_to_folder(ct, seeds, tmp_path / "out", device="cpu", uncertainty=False)
    assert len(checks) == 1  # where the seeds were read, not again in the engine


def test_case_validate_checks_ct_then_seeds_and_repairs_the_image(rng):
    geometry = body_geometry()
    image = body_ct(rng, fov_circle=True)
    case = Case(image, geometry, [Seed("1", tuple(centre_ras(geometry)))], {"volume": "chest"})
    lines = []
    case.validate(warn=lines.append)
    assert np.isfinite(case.image).all() and lines and lines[0].startswith("chest has")
    case.image = np.zeros_like(image)
    with pytest.raises(InputError, match="^chest has the same value"):
        case.validate(warn=lines.append)


# --- through the CLI: exit 2, one line, nothing written ---------------------------------------------
def test_cli_refuses_a_label_map_given_as_the_ct(rng, tmp_path, capsys):
    geometry = body_geometry()
    ct, seeds = write_case(tmp_path, (body_ct(rng) > 0).astype(np.uint8), geometry, "mask.nii.gz")
    expect_cli_refusal(predict_args(ct, seeds, tmp_path / "out"), capsys, tmp_path / "out", "mask.nii.gz holds only 2")


def test_cli_refuses_its_own_segmentation_given_as_the_ct(rng, tmp_path, capsys):
    """nodes.seg.nrrd of a run, handed back as the CT."""
    geometry = body_geometry()
    ct, seeds = write_case(tmp_path / "in", body_ct(rng), geometry)
    code, _, err = run_cli(predict_args(ct, seeds, tmp_path / "first"), capsys)
    assert code == 0, err
    out = tmp_path / "second"
    expect_cli_refusal(predict_args(tmp_path / "first" / "nodes.seg.nrrd", seeds, out), capsys, out, "label map")


def test_cli_refuses_a_ct_in_metres_and_a_sheared_nrrd(rng, tmp_path, capsys):
    image = body_ct(rng)
    ct, seeds = write_case(tmp_path / "m", image, body_geometry())
    sitk_image = sitk.ReadImage(str(ct))
    sitk_image.SetSpacing([s / 1000 for s in sitk_image.GetSpacing()])
    sitk_image.SetOrigin([o / 1000 for o in sitk_image.GetOrigin()])
    metres = tmp_path / "m" / "metres.nrrd"
    sitk.WriteImage(sitk_image, str(metres))
    seeds_m = tmp_path / "m" / "seeds_m.csv"
    centre = centre_ras(body_geometry()) / 1000
    seeds_m.write_text(f"id,r,a,s\n1,{centre[0]},{centre[1]},{centre[2]}\n")
    expect_cli_refusal(predict_args(metres, seeds_m, tmp_path / "o1"), capsys, tmp_path / "o1", "metres")

    sheared = sitk.ReadImage(str(ct))
    sheared.SetDirection((1.0, 0.25, 0.0, 0.0, 0.97, 0.0, 0.0, 0.0, 1.0))
    sheared_path = tmp_path / "m" / "sheared.nrrd"
    sitk.WriteImage(sheared, str(sheared_path))
    expect_cli_refusal(predict_args(sheared_path, seeds, tmp_path / "o2"), capsys, tmp_path / "o2", "sheared axes")


def test_cli_refuses_raw_uint16_and_an_empty_volume(rng, tmp_path, capsys):
    geometry = body_geometry()
    raw = np.clip(body_ct(rng) + 1024, 0, None).astype(np.uint16)
    ct, seeds = write_case(tmp_path / "raw", raw, geometry, "raw.mha")
    expect_cli_refusal(predict_args(ct, seeds, tmp_path / "o1"), capsys, tmp_path / "o1", "rescale slope/intercept")
    ct, seeds = write_case(tmp_path / "zero", np.zeros(geometry.shape_kji, np.int16), geometry, "zero.nii")
    expect_cli_refusal(predict_args(ct, seeds, tmp_path / "o2"), capsys, tmp_path / "o2", "same value (0)")


def test_cli_refuses_an_mr_dicom_series(rng, tmp_path, capsys):
    geometry = body_geometry(shape_kji=(4, 56, 60))
    image = body_ct(rng, shape_kji=geometry.shape_kji).astype(np.int16)
    folder = tmp_path / "mr"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.shape[0]):
        plane = sitk.GetImageFromArray(image[k : k + 1])
        plane.SetSpacing((0.8, 0.75, 2.0))
        plane.SetOrigin((-20.0, -15.0, 40.0 + 2.0 * k))
        for tag, value in {"0008|0060": "MR", "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
                           "0008|0018": f"1.2.826.0.1.3680043.2.1125.7.{k + 1}",
                           "0020|000d": "1.2.826.0.1.3680043.2.1125.8",
                           "0020|000e": "1.2.826.0.1.3680043.2.1125.9", "0020|0013": str(k + 1)}.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"im{k}.dcm"))
        writer.Execute(plane)
    seeds = tmp_path / "seeds.csv"
    centre = centre_ras(geometry)
    seeds.write_text(f"id,r,a,s\n1,{centre[0]},{centre[1]},{centre[2]}\n")
    expect_cli_refusal(predict_args(folder, seeds, tmp_path / "out"), capsys, tmp_path / "out", "Modality MR")


def test_cli_refuses_nan_inside_the_body(rng, tmp_path, capsys):
    image = body_ct(rng, fov_circle=True)
    image[7, 28, 30] = np.nan
    ct, seeds = write_case(tmp_path, image, body_geometry())
    expect_cli_refusal(predict_args(ct, seeds, tmp_path / "out"), capsys, tmp_path / "out", "inside the body")


def test_cli_reads_nan_outside_the_body_as_air_and_says_so(rng, tmp_path, capsys):
    image = body_ct(rng, fov_circle=True)
    ct, seeds = write_case(tmp_path, image, body_geometry(), "fov.nrrd")
    out = tmp_path / "out"
    code, stdout, err = run_cli(predict_args(ct, seeds, out), capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("lymphnode-mtl: warning: ")]
    assert len(warnings) == 1 and "fov.nrrd has" in warnings[0] and "read as air" in warnings[0]
    assert "Traceback" not in err
    assert all((out / name).is_file() for name in OUTPUTS)


def test_cli_refuses_duplicate_seed_positions(rng, tmp_path, capsys):
    geometry = body_geometry()
    centre = centre_ras(geometry)
    seeds = [Seed("2R", tuple(centre)), Seed("2L", tuple(centre + [0.1, 0.1, 0.0]))]
    ct, seeds_path = write_case(tmp_path, body_ct(rng), geometry, seeds=seeds)
    expect_cli_refusal(predict_args(ct, seeds_path, tmp_path / "out"), capsys, tmp_path / "out",
                       "seeds 2R and 2L are at the same position")


def test_volume_geometry_with_shear_is_refused_as_in_dicom(rng):
    """The same refusal the DICOM reader gives for sheared slices, now for any grid."""
    matrix = np.eye(4)
    matrix[:3, :3] = [[0.8, 0.3, 0.0], [0.0, 0.75, 0.0], [0.0, 0.0, 2.0]]
    geometry = VolumeGeometry(matrix, body_geometry().shape_kji)
    refused(body_ct(rng), geometry, "resample it to an orthogonal grid")
