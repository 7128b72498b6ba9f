"""DICOM SEG output: `predict --dicom-seg` writes nodes.dcm whose segments, re-read with highdicom
and placed on the CT grid by their frame positions, equal the .seg.nrrd masks, for a real DICOM
series and for phantoms on oblique and flipped sagittal grids; dciodvfy finds no errors; labels,
descriptions, codes and algorithm identification are right."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from geometry_cases import SPHERE_CENTRE_RAS, other_lattice_encodings, same_lattice_encodings, sphere_volume
from LymphNodeMTLLib import __version__
from LymphNodeMTLLib.commands.cli import main
from LymphNodeMTLLib.core.case import Seed
from LymphNodeMTLLib.core.errors import InputError
from LymphNodeMTLLib.core.geometry import LPS_TO_RAS
from LymphNodeMTLLib.core.node_result import NodeResult
from dicom_seg_masks import read_dicom_seg_masks
from LymphNodeMTLLib.io.dicom_sources import read_source_datasets
from LymphNodeMTLLib.io.volume_reader import read_volume, write_volume
from LymphNodeMTLLib.outputs.dicom_seg_writer import segment_description_text, write_dicom_seg
from LymphNodeMTLLib.outputs.segmentation_writer import read_segmentation, segment_mask
from LymphNodeMTLLib.phantoms.case_generator import generate_phantom_case
from scipy.spatial.transform import Rotation
from seed_csv import write_seeds_csv

SHARED_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"
DICOM_SERIES = SHARED_CT / "dicom_abdomen_series"
# Two hand-picked seeds inside the abdomen of that series (RAS mm): the aorta, and the soft
# tissue between stomach and pancreas.
DICOM_SEEDS = [Seed("a", (-8.0, 145.0, -784.5)), Seed("b", (-40.0, 190.0, -790.5))]


# --- helpers ----------------------------------------------------------------------------------------
def dciodvfy_messages(path) -> tuple[list[str], list[str]]:
    """(errors, warnings) of dciodvfy on a file; skips where dicom3tools is not installed."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy is not installed (CI installs Debian's dicom3tools)")
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    lines = (run.stdout + run.stderr).splitlines()
    return [l for l in lines if l.startswith("Error")], [l for l in lines if l.startswith("Warning")]


def predict_with_dicom_seg(volume, seeds, out, capsys):
    code = main(["predict", "--volume", str(volume), "--seeds", str(seeds), "--out", str(out),
                 "--device", "cpu", "--dicom-seg"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "nodes.dcm" in captured.out
    # what the SEG references is said on stderr where it is no DICOM series, and in run.json always
    synthetic = "synthetic CT series" in captured.err
    references = json.loads((out / "run.json").read_text())["dicom_seg_references"]
    assert references.startswith("synthetic CT series" if synthetic else "the source DICOM series")
    return out / "nodes.dcm", synthetic


def assert_seg_matches_seg_nrrd(out: Path, geometry, node_ids, require_voxels=True):
    """Per segment, the DICOM SEG mask on the CT grid equals the .seg.nrrd mask."""
    labelmap, seg_geometry, segments = read_segmentation(out / "nodes.seg.nrrd")
    assert seg_geometry.same_grid(geometry)
    dicom_masks = read_dicom_seg_masks(out / "nodes.dcm", geometry)
    assert list(dicom_masks) == [f"LN {i}" for i in node_ids] == [s["name"] for s in segments]
    voxels = 0
    for segment in segments:
        expected = segment_mask(labelmap, segment)
        np.testing.assert_array_equal(dicom_masks[segment["name"]], expected, err_msg=segment["name"])
        voxels += int(expected.sum())
    if require_voxels:
        assert voxels > 0, "every mask is empty: the comparison would prove nothing"


def assert_segment_descriptions(path, node_ids, probabilities):
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert len(ds.SegmentSequence) == len(node_ids)
    for number, (item, node_id, p) in enumerate(zip(ds.SegmentSequence, node_ids, probabilities), 1):
        assert item.SegmentNumber == number
        assert item.SegmentLabel == f"LN {node_id}"
        assert item.TrackingID == node_id
        # nodes.csv rounds to 4 decimals, the description to 3: compare the numbers
        # a node that is not ok says so first; one without a usable mask has no probability
        match = re.fullmatch(r"(?:REVIEW: [a-z_]+(?: \(mask agreement \d\.\d\d\))?, )?"
                             r"metastasis probability (\d\.\d{3}|unknown) \(LymphNodeMTL demo model, "
                             r"not for clinical use\)", item.SegmentDescription)
        assert match, item.SegmentDescription
        if np.isnan(p):
            assert match.group(1) == "unknown"
        else:
            assert float(match.group(1)) == pytest.approx(p, abs=6e-4)
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", "85756007")
        assert (kind.CodingSchemeDesignator, kind.CodeValue, kind.CodeMeaning) == (
            "SCT", "59441001", "Lymph node")
        assert "AnatomicRegionSequence" not in item  # unknown here: left out, not guessed
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "LymphNodeMTL"
        assert algorithm.AlgorithmVersion == __version__
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # Artificial Intelligence
        assert re.fullmatch(r"model_id=.+,weights_sha256=[0-9a-f]{64}", algorithm.AlgorithmParameters)
    return ds


def assert_no_dciodvfy_errors(path):
    errors, _warnings = dciodvfy_messages(path)
    assert errors == [], "\n".join(errors)


# --- CLI end to end ---------------------------------------------------------------------------------
def test_real_dicom_series(tmp_path, capsys):
    if not DICOM_SERIES.is_dir():
        pytest.skip(f"{DICOM_SERIES} is absent (../shared/data/ct not available here)")
    seeds = tmp_path / "seeds.csv"
    write_seeds_csv(seeds, DICOM_SEEDS)
    out = tmp_path / "out"
    path, synthetic = predict_with_dicom_seg(DICOM_SERIES, seeds, out, capsys)
    assert not synthetic
    _, geometry, _ = read_volume(DICOM_SERIES)
    # real anatomy without nodes: the demo model may leave both masks empty, which is no error here
    assert_seg_matches_seg_nrrd(out, geometry, ["a", "b"], require_voxels=False)

    probabilities = [float(line.split(",")[4] or "nan") for line in (out / "nodes.csv").read_text().splitlines()[1:]]
    ds = assert_segment_descriptions(path, ["a", "b"], probabilities)
    # The SEG references every image of the source series, in its frame of reference.
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(DICOM_SERIES.iterdir())]
    source_uids = {str(s.file_meta.MediaStorageSOPInstanceUID) for s in sources}
    referenced = {str(item.ReferencedSOPInstanceUID)
                  for series in ds.ReferencedSeriesSequence for item in series.ReferencedInstanceSequence}
    assert referenced == source_uids
    assert ds.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert ds.PatientID == sources[0].PatientID and ds.StudyDate == sources[0].StudyDate
    for frame in ds.PerFrameFunctionalGroupsSequence:  # each frame derived from the image at its position
        source_uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        source = next(s for s in sources if s.file_meta.MediaStorageSOPInstanceUID == source_uid)
        np.testing.assert_allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                                   [float(v) for v in source.ImagePositionPatient], atol=1e-4)
    assert_no_dciodvfy_errors(path)


def test_each_dicom_instance_is_opened_once_for_its_header(tmp_path, monkeypatch):
    """predict --dicom-seg on a DICOM folder: one header pass feeds the completeness check, the
    series choice, the stack check, the metadata and the SEG's source references. pydicom reads
    each instance once and nothing else opens one for its header (no GDCM series scan, no SimpleITK
    header read); SimpleITK reads each instance's pixels once."""
    import builtins
    from collections import Counter

    import SimpleITK as sitk
    from ct_samples import body_ct, body_geometry, centre_ras, write_dicom_series
    from LymphNodeMTLLib.commands.predict import predict_to_folder

    geometry = body_geometry(shape_kji=(6, 56, 60))
    image = body_ct(np.random.default_rng(11), shape_kji=geometry.shape_kji).astype(np.int16)
    folder = write_dicom_series(tmp_path / "dicom", image)
    (folder / "notes.txt").write_text("not DICOM")
    seeds = tmp_path / "seeds.csv"
    write_seeds_csv(seeds, [Seed("1", tuple(centre_ras(geometry)))])
    instances = sorted(str(p) for p in folder.glob("*.dcm"))
    header_reads, opens, pixel_reads = Counter(), Counter(), Counter()
    real_dcmread, real_open = pydicom.dcmread, builtins.open
    real_set_file_names = sitk.ImageSeriesReader.SetFileNames

    def dcmread(fp, *args, **kwargs):
        header_reads[str(fp)] += 1
        return real_dcmread(fp, *args, **kwargs)

    def counting_open(file, *args, **kwargs):
        if str(file) in instances:
            opens[str(file)] += 1
        return real_open(file, *args, **kwargs)

    def set_file_names(reader, names):
        pixel_reads.update(names)
        return real_set_file_names(reader, names)

    def second_header_read(*args, **kwargs):
        raise AssertionError("a DICOM header read outside the header pass")

    monkeypatch.setattr(pydicom, "dcmread", dcmread)
    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(sitk.ImageSeriesReader, "SetFileNames", set_file_names)
    for name in ("GetGDCMSeriesIDs", "GetGDCMSeriesFileNames"):
        monkeypatch.setattr(sitk.ImageSeriesReader, name, second_header_read)
    monkeypatch.setattr(sitk.ImageFileReader, "ReadImageInformation", second_header_read)

    out = tmp_path / "out"
    predict_to_folder(folder, seeds, out, device="cpu", dicom_seg=True, uncertainty=False)
    monkeypatch.undo()

    assert header_reads == Counter(instances + [str(folder / "notes.txt")])  # notes.txt: tried once
    assert opens == {f: 1 for f in instances}
    assert pixel_reads == {f: 1 for f in instances}
    seg = pydicom.dcmread(out / "nodes.dcm")
    referenced = {str(item.ReferencedSOPInstanceUID)
                  for series in seg.ReferencedSeriesSequence for item in series.ReferencedInstanceSequence}
    assert referenced == {f"1.2.826.0.1.3680043.2.1125.17.{k + 1}" for k in range(6)}


PHANTOM_DIRECTIONS = {
    "oblique": Rotation.from_euler("xyz", [20, -10, 30], degrees=True).as_matrix(),
    # sagittal slices (k along R-L) with flipped in-plane axes
    "flipped_sagittal": np.eye(3)[:, [1, 2, 0]] * np.array([1.0, -1.0, -1.0]),
}


@pytest.mark.parametrize("name", list(PHANTOM_DIRECTIONS))
def test_phantom_nrrd_on_a_non_axial_grid(name, tmp_path, capsys):
    phantom = generate_phantom_case(np.random.default_rng(3), 3, spacing=(0.9, 0.9, 1.5),
                                    direction=PHANTOM_DIRECTIONS[name], chest=False,
                                    field_of_view_mm=(80.0, 80.0, 60.0))
    ct = tmp_path / "ct.nrrd"
    write_volume(ct, phantom.image, phantom.geometry)
    seeds = tmp_path / "seeds.csv"
    write_seeds_csv(seeds, phantom.to_case().seeds)
    out = tmp_path / "out"
    path, synthetic = predict_with_dicom_seg(ct, seeds, out, capsys)
    assert synthetic  # an NRRD CT: the SEG's source series is made up, and the user is told
    _, geometry, _ = read_volume(ct)
    ids = [n.node_id for n in phantom.nodes]
    assert_seg_matches_seg_nrrd(out, geometry, ids)

    probabilities = [float(line.split(",")[4] or "nan") for line in (out / "nodes.csv").read_text().splitlines()[1:]]
    ds = assert_segment_descriptions(path, ids, probabilities)
    # Synthetic source series: the SEG's planes are the CT grid's i/j axes (LPS), in new UIDs.
    ijk_to_lps = LPS_TO_RAS @ geometry.ijk_to_ras
    axes = ijk_to_lps[:3, :3] / geometry.spacing
    orientation = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    np.testing.assert_allclose([float(v) for v in orientation], [*axes[:, 0], *axes[:, 1]], atol=1e-6)
    assert ds.PatientID == "ANONYMOUS"
    assert_no_dciodvfy_errors(path)


# --- writer and reader without the network ------------------------------------------------------------
ENCODINGS = {**same_lattice_encodings(), **other_lattice_encodings()}


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_masks_round_trip_on_every_grid_encoding(name, tmp_path):
    """A sphere node, a corner node and an empty node survive write + read exactly."""
    geometry = ENCODINGS[name]
    image, sphere = sphere_volume(geometry)
    lo, hi = np.argwhere(sphere).min(axis=0), np.argwhere(sphere).max(axis=0) + 1
    corner = np.zeros((2, 3, 4), dtype=bool)
    corner[0, :, 1:] = True
    results = [
        NodeResult("4R", tuple(SPHERE_CENTRE_RAS), tuple(lo), tuple(hi),
                   sphere[tuple(slice(a, b) for a, b in zip(lo, hi))].copy(), probability=0.734),
        NodeResult("7", (0.0, 0.0, 0.0), (0, 0, 0), (2, 3, 4), corner, probability=0.1),
        NodeResult("empty", (0.0, 0.0, 0.0), (5, 5, 5), (6, 6, 6), np.zeros((1, 1, 1), bool),
                   probability=float("nan")),
    ]
    path = write_dicom_seg(tmp_path / "nodes.dcm", results, image, geometry, None, "test-model",
                           "0" * 64, {"PatientID": "P1"})
    masks = read_dicom_seg_masks(path, geometry)
    assert list(masks) == ["LN 4R", "LN 7", "LN empty"]
    for r in results:
        np.testing.assert_array_equal(masks[f"LN {r.node_id}"], r.full_mask(geometry.shape_kji))
    ds = pydicom.dcmread(path)
    assert ds.PatientID == "P1"
    assert ds.SegmentSequence[2].SegmentDescription.startswith("metastasis probability unknown")
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed, not left behind
    if name in ("oblique", "permuted_sagittal"):
        assert_no_dciodvfy_errors(path)


def test_clinical_model_has_no_demo_note():
    assert segment_description_text(0.7341, clinical_use=True) == "metastasis probability 0.734"
    assert segment_description_text(0.7341, clinical_use=False) == (
        "metastasis probability 0.734 (LymphNodeMTL demo model, not for clinical use)")


def test_overlapping_masks_are_refused(tmp_path):
    geometry = ENCODINGS["lps_axial"]
    image, _ = sphere_volume(geometry)
    block = np.ones((2, 2, 2), dtype=bool)
    results = [NodeResult("a", (0, 0, 0), (0, 0, 0), (2, 2, 2), block),
               NodeResult("b", (0, 0, 0), (1, 1, 1), (3, 3, 3), block)]
    with pytest.raises(ValueError, match="overlaps"):
        write_dicom_seg(tmp_path / "nodes.dcm", results, image, geometry, None, "m", "0" * 64)
    assert not list(tmp_path.iterdir())


def test_source_series_must_match_the_ct_grid(tmp_path):
    if not DICOM_SERIES.is_dir():
        pytest.skip(f"{DICOM_SERIES} is absent (../shared/data/ct not available here)")
    _, geometry, _ = read_volume(DICOM_SERIES)
    sources = read_source_datasets(DICOM_SERIES, geometry)
    assert len(sources) == geometry.shape_kji[0]
    s_of_k = [float(ds.ImagePositionPatient[2]) for ds in sources]  # axial series: S = LPS z
    np.testing.assert_allclose(s_of_k, geometry.ijk_to_ras_points(
        np.column_stack([np.zeros(len(sources)), np.zeros(len(sources)), np.arange(len(sources))]))[:, 2])
    assert all(ds.SOPInstanceUID and ds.StudyInstanceUID and ds.SeriesInstanceUID for ds in sources)
    shifted = type(geometry)(geometry.ijk_to_ras + np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1.0],
                                                              [0, 0, 0, 0]]), geometry.shape_kji)
    with pytest.raises(InputError, match="slices were found"):
        read_source_datasets(DICOM_SERIES, shifted)
