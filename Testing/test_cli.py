"""The CLI end to end: outputs of predict, and every bad input refused with one line, exit 2,
and nothing written."""

import csv
import json
import os
import re

import numpy as np
import pytest
import SimpleITK as sitk
from geometry_cases import SPHERE_CENTRE_RAS, other_lattice_encodings, sphere_volume
from LymphNodeMTLLib.commands.cli import COMMANDS, main
from LymphNodeMTLLib.core.case import Seed
from LymphNodeMTLLib.io.seed_reader import write_markups_json
from LymphNodeMTLLib.io.volume_reader import read_volume, write_volume
from LymphNodeMTLLib.network.model_store import HASH_FILE, WEIGHTS_FILE, default_model_dir
from LymphNodeMTLLib.outputs.results_table import COLUMNS
from LymphNodeMTLLib.outputs.segmentation_writer import read_segmentation
from seed_csv import write_seeds_csv

EXPECTED_COLUMNS = ["id", "seed_r", "seed_a", "seed_s", "probability", "predicted_label",
                    "volume_mm3", "short_axis_mm", "long_axis_mm", "mean_hu", "sd_hu",
                    "status", "mask_agreement", "probability_low", "probability_high", "field_of_view_mm"]


@pytest.fixture
def ct_and_seeds(tmp_path):
    """A CT with a sphere 'node' and a seed file: one seed on it, one in plain fat."""
    geom = other_lattice_encodings()["oblique"]
    image, _ = sphere_volume(geom)
    rng = np.random.default_rng(0)
    image = image + rng.normal(0, 10, image.shape).astype(np.float32)
    image[:, :, :3] = -1000.0  # air at one edge, far from both seeds: a CT shows air, fat and soft tissue
    ct = tmp_path / "ct.nrrd"
    write_volume(ct, image, geom)
    seeds = tmp_path / "seeds.mrk.json"
    write_markups_json(seeds, [Seed("4R", tuple(SPHERE_CENTRE_RAS)),
                               Seed("7", tuple(SPHERE_CENTRE_RAS + [0, 0, 13.0]))])
    return ct, seeds


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def expect_refusal(args, capsys, out_dir, fragment):
    code, _, err = run_cli(args, capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("lymphnode-mtl: error: ") and fragment in lines[0], lines[0]
    assert not any((out_dir / name).exists() for name in ("nodes.seg.nrrd", "nodes.csv", "run.json"))


def ct_geometry_of(path):
    return read_volume(path)[1]


def test_top_level_help_lists_each_command_once(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for name in COMMANDS:
        assert len(re.findall(rf"^\s+{name}\s", text, flags=re.MULTILINE)) == 1, name


def test_help_speaks_plainly(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = capsys.readouterr().out
    for words in ("--volume", "--seeds", "--out", "DICOM", "RAS", "LPS", "nodes.seg.nrrd", "example"):
        assert words in text


def test_predict_writes_all_outputs(ct_and_seeds, tmp_path, capsys):
    ct, seeds = ct_and_seeds
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["predict", "--volume", ct, "--seeds", seeds, "--out", out, "--device", "cpu"], capsys)
    assert code == 0
    assert "nodes.seg.nrrd" in stdout
    # the seed in plain fat (whatever the network finds there runs into the small CT's edge) gets
    # no usable mask: said on stderr, and no probability or label anywhere
    assert "without a usable mask" in stderr and "4R" not in stderr

    with open(out / "nodes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0].keys()) == EXPECTED_COLUMNS == list(COLUMNS)
    assert [r["id"] for r in rows] == ["4R", "7"]
    assert float(rows[0]["seed_r"]) == pytest.approx(SPHERE_CENTRE_RAS[0], abs=0.01)
    assert rows[0]["status"] == "ok" and rows[1]["status"] in ("empty_mask", "touches_field_of_view")
    assert f"7 ({rows[1]['status']})" in stderr
    for r in rows[:1]:
        assert 0.0 <= float(r["probability"]) <= 1.0
        assert r["predicted_label"] in ("0", "1")
        assert r["probability_low"] == r["probability_high"] == ""  # no interval: it took four more passes
        assert 0.9 <= float(r["mask_agreement"]) <= 1.0 and float(r["field_of_view_mm"]) == 48.0
    assert rows[1]["probability"] == rows[1]["predicted_label"] == rows[1]["probability_low"] == ""

    record = json.loads((out / "run.json").read_text())
    assert record["model_id"] and len(record["weights_sha256"]) == 64
    assert record["device"] == "cpu"
    assert {"torch", "monai", "SimpleITK", "numpy"} <= set(record["packages"])
    assert {"sample_patches", "forward", "paste_back", "measurements", "write_outputs"} <= set(record["timings_s"])
    assert record["fields_of_view_mm"]["4R"] == 48.0 and record["uncertainty"] is True
    assert record["case"]["source"] == "image file" and record["case"]["seeds"] == 2
    assert record["case"]["size_ijk"] == list(ct_geometry_of(ct).shape_kji[::-1])

    # the printed table has nodes.csv's status and label; a timing line ends the summary
    table = {line.split()[0]: line for line in stdout.splitlines()[1:3]}
    assert table["4R"].endswith(" ok") and (" benign " in table["4R"] or " metastatic " in table["4R"])
    assert table["7"].endswith(rows[1]["status"]) and "—" in table["7"]
    assert re.fullmatch(r"time: read [\d.]+ s, first view [\d.]+ s(, zoom [\d.]+ s)?, uncertainty [\d.]+ s, "
                        r"write [\d.]+ s",
                        stdout.splitlines()[-1])

    labelmap, geometry, segments = read_segmentation(out / "nodes.seg.nrrd")
    _, ct_geometry, _ = read_volume(ct)
    assert geometry.same_grid(ct_geometry, tol=1e-6)
    assert [s["name"] for s in segments] == ["LN 4R", "LN 7"]
    assert segments[0]["tags"]["LymphNodeMTL.SeedId"] == "4R"
    assert "59441001" in segments[0]["tags"]["TerminologyEntry"]
    assert float(segments[0]["tags"]["LymphNodeMTL.Probability"]) == pytest.approx(float(rows[0]["probability"]), abs=1e-4)


def test_existing_results_are_not_overwritten(ct_and_seeds, tmp_path, capsys):
    ct, seeds = ct_and_seeds
    out = tmp_path / "out"
    out.mkdir()
    (out / "nodes.seg.nrrd").write_text("a radiologist's edited masks")
    code, _, err = run_cli(["predict", "--volume", ct, "--seeds", seeds, "--out", out], capsys)
    assert code == 2 and "--overwrite" in err
    assert (out / "nodes.seg.nrrd").read_text() == "a radiologist's edited masks"


# --- bad input --------------------------------------------------------------------------------
def _predict(ct, seeds, out, *extra):
    return ["predict", "--volume", ct, "--seeds", seeds, "--out", out, "--device", "cpu", *extra]


def test_missing_ct(ct_and_seeds, tmp_path, capsys):
    _, seeds = ct_and_seeds
    out = tmp_path / "out"
    expect_refusal(_predict(tmp_path / "nope.nrrd", seeds, out), capsys, out, "nope.nrrd")


def test_unreadable_ct(ct_and_seeds, tmp_path, capsys):
    _, seeds = ct_and_seeds
    bad = tmp_path / "broken.nrrd"
    bad.write_bytes(b"NRRD0004\ngarbage that is not a header\n\x00\x01")
    out = tmp_path / "out"
    expect_refusal(_predict(bad, seeds, out), capsys, out, "broken.nrrd")


def test_2d_image(ct_and_seeds, tmp_path, capsys):
    _, seeds = ct_and_seeds
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.Image([64, 64], sitk.sitkInt16), str(path))
    out = tmp_path / "out"
    expect_refusal(_predict(path, seeds, out), capsys, out, "2-D")


def test_4d_image(ct_and_seeds, tmp_path, capsys):
    _, seeds = ct_and_seeds
    path = tmp_path / "series.nrrd"
    sitk.WriteImage(sitk.Image([16, 16, 16, 3], sitk.sitkInt16), str(path))
    out = tmp_path / "out"
    expect_refusal(_predict(path, seeds, out), capsys, out, "4-D")


def test_seed_outside_volume(ct_and_seeds, tmp_path, capsys):
    ct, _ = ct_and_seeds
    seeds = tmp_path / "far.csv"
    write_seeds_csv(seeds, [Seed("1", tuple(SPHERE_CENTRE_RAS)), Seed("2", (500.0, 0.0, 0.0))])
    out = tmp_path / "out"
    expect_refusal(_predict(ct, seeds, out), capsys, out, "seed 2")


def test_duplicate_seed_ids(ct_and_seeds, tmp_path, capsys):
    ct, _ = ct_and_seeds
    seeds = tmp_path / "dup.csv"
    write_seeds_csv(seeds, [Seed("1", tuple(SPHERE_CENTRE_RAS)), Seed("1", tuple(SPHERE_CENTRE_RAS + 2))])
    out = tmp_path / "out"
    expect_refusal(_predict(ct, seeds, out), capsys, out, "duplicate")


def test_empty_seed_file(ct_and_seeds, tmp_path, capsys):
    ct, _ = ct_and_seeds
    seeds = tmp_path / "empty.csv"
    seeds.write_text("")
    out = tmp_path / "out"
    expect_refusal(_predict(ct, seeds, out), capsys, out, "empty.csv")


def test_bad_csv_header(ct_and_seeds, tmp_path, capsys):
    ct, _ = ct_and_seeds
    seeds = tmp_path / "bad.csv"
    seeds.write_text("name,x,y,z\n1,0,0,0\n")
    out = tmp_path / "out"
    expect_refusal(_predict(ct, seeds, out), capsys, out, "id,r,a,s")


def test_missing_model_folder(ct_and_seeds, tmp_path, capsys):
    ct, seeds = ct_and_seeds
    out = tmp_path / "out"
    expect_refusal(_predict(ct, seeds, out, "--model", tmp_path / "no-model"), capsys, out, "does not exist")


def _copy_model(tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(default_model_dir(), folder)
    return folder


def test_corrupt_model_folder(ct_and_seeds, tmp_path, capsys):
    ct, seeds = ct_and_seeds
    folder = _copy_model(tmp_path)
    (folder / "config.json").write_text("{")
    out = tmp_path / "out"
    expect_refusal(_predict(ct, seeds, out, "--model", folder), capsys, out, "config")


def test_model_hash_mismatch(ct_and_seeds, tmp_path, capsys):
    ct, seeds = ct_and_seeds
    folder = _copy_model(tmp_path)
    (folder / HASH_FILE).write_text("0" * 64 + f"  {WEIGHTS_FILE}\n")
    out = tmp_path / "out"
    expect_refusal(_predict(ct, seeds, out, "--model", folder), capsys, out, "SHA-256")


def test_predict_output_opens_in_slicer_unchanged(ct_and_seeds, tmp_path, capsys, mrml_scene):
    """nodes.seg.nrrd in real MRML (slicer-core): one segment per seed, names, tags, CT geometry."""
    import slicer
    import vtk
    from slicer_harness import load_segmentation_node, reference_volume, segment_tag, segments_of

    ct, seeds = ct_and_seeds
    out = tmp_path / "out"
    assert run_cli(_predict(ct, seeds, out), capsys)[0] == 0
    node = load_segmentation_node(out / "nodes.seg.nrrd")
    segments = segments_of(node)
    assert [s.GetName() for s in segments] == ["LN 4R", "LN 7"]
    assert [segment_tag(s, "LymphNodeMTL.SeedId") for s in segments] == ["4R", "7"]
    with open(out / "nodes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for s, row in zip(segments, rows):
        # a node without a usable mask: "nan" in the tag, an empty cell in the table
        assert float(segment_tag(s, "LymphNodeMTL.Probability")) == pytest.approx(
            float(row["probability"] or "nan"), abs=1e-4, nan_ok=True)
        assert segment_tag(s, "LymphNodeMTL.Status") == row["status"]
    _, ct_geometry, _ = read_volume(ct)
    labelmap_node = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    node.GetSegmentation().GetSegmentIDs(ids)
    assert slicer.modules.segmentations.logic().ExportSegmentsToLabelmapNode(
        node, ids, labelmap_node, reference_volume(ct_geometry))
    matrix = vtk.vtkMatrix4x4()
    labelmap_node.GetIJKToRASMatrix(matrix)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(matrix), ct_geometry.ijk_to_ras, atol=1e-6)
    labelmap, _, _ = read_segmentation(out / "nodes.seg.nrrd")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(labelmap_node) > 0, labelmap > 0)


# --- the parser refuses meaningless arguments with one line -----------------------------------------
@pytest.mark.parametrize("argv, fragment", [
    (["predict", "--volume", "ct.nrrd", "--seeds", "s.csv", "--out", "o", "--batch-size", "0"],
     "argument --batch-size: must be at least 1, got 0"),
    (["predict", "--volume", "ct.nrrd", "--seeds", "s.csv", "--out", "o", "--batch-size", "-4"],
     "argument --batch-size: must be at least 1, got -4"),
    (["predict", "--volume", "ct.nrrd", "--seeds", "s.csv", "--out", "o", "--batch-size", "eight"],
     "'eight' is not a whole number"),
    (["predict", "--volume", "ct.nrrd", "--seeds", "s.csv", "--out", "o", "--device", "meta"],
     "unknown device 'meta'"),
    (["predict", "--volume", "ct.nrrd", "--seeds", "s.csv", "--out", "o", "--device", "tpu:0"],
     "unknown device 'tpu:0'"),
    (["demo", "--nodes", "0"], "argument --nodes: must be at least 1, got 0"),
    (["phantom", "--out", "p", "--cases", "0", "--seed", "1"], "argument --cases: must be at least 1, got 0"),
    (["phantom", "--out", "p", "--cases", "-2", "--seed", "1"], "argument --cases: must be at least 1, got -2"),
    (["ablate", "--manifest", "m", "--test-manifest", "t", "--out", "o", "--epochs", "-1"],
     "argument --epochs: must be 0 or more, got -1"),
    (["ablate", "--manifest", "m", "--test-manifest", "t", "--out", "o", "--bootstrap", "0"],
     "argument --bootstrap: must be at least 1"),
    (["ablate", "--manifest", "m", "--test-manifest", "t", "--out", "o", "--budget-minutes", "nan"],
     "argument --budget-minutes: must be a number above 0"),
    (["evaluate", "--manifest", "m", "--out", "o", "--device", "mps:1"], "unknown device 'mps:1'"),
    (["predict", "--volume", "ct.nrrd"], "the following arguments are required: --out"),  # --seeds or --prompts: predict says
    (["nonsense"], "invalid choice: 'nonsense'"),
])
def test_bad_arguments_are_one_line_from_the_parser(tmp_path, capsys, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lymphnode-mtl: error: ") and fragment in lines[0], captured.err
    assert "--help" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_unavailable_gpus_are_refused_by_the_parser(tmp_path, capsys):
    import torch

    argv = ["predict", "--volume", "ct.nrrd", "--seeds", "s.csv", "--out", str(tmp_path / "o")]
    wanted = []
    if not torch.cuda.is_available():
        wanted.append(("cuda", "no CUDA GPU is available here"))
    else:
        wanted.append((f"cuda:{torch.cuda.device_count()}", "CUDA GPU(s)"))
    if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        wanted.append(("mps", "MPS is not available here"))
    for device, fragment in wanted:
        with pytest.raises(SystemExit) as exit_info:
            main(argv + ["--device", device])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and fragment in err, err


def test_every_command_is_its_own_module_dispatched_from_the_table():
    import importlib

    from LymphNodeMTLLib.commands.cli import COMMANDS, build_parser

    parser = build_parser()
    names = set(parser._subparsers._group_actions[0].choices)
    assert names == set(COMMANDS)
    for name, (module_name, _help) in COMMANDS.items():
        module = importlib.import_module(f"LymphNodeMTLLib.commands.{module_name}")
        assert callable(module.add_arguments) and callable(module.run), name
        assert (module.__doc__ or "").strip(), name


def test_predict_to_folder_is_the_packages_light_entry_point():
    """`from LymphNodeMTLLib import predict_to_folder` works, documented, without importing torch
    or SimpleITK until a prediction runs."""
    import subprocess
    import sys

    code = ("import sys, inspect, LymphNodeMTLLib as L; f = L.predict_to_folder; "
            "assert 'Args:' in f.__doc__ and 'Raises:' in f.__doc__; "
            "p = inspect.signature(f).parameters; "
            "assert list(p)[:3] == ['volume', 'seeds', 'out_dir'] and 'PathLike' in str(p['volume'].annotation); "
            "print(sorted(m for m in ('torch', 'SimpleITK', 'monai') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": os.pathsep.join(sys.path)})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_demo_truth_lines_say_outcome_and_prediction_in_words():
    """A drawn outcome that differs from its true P (benign at P 0.73) is said as a random draw,
    beside the predicted label in the same words, so the lines do not read as a contradiction."""
    from types import SimpleNamespace

    from LymphNodeMTLLib.commands.demo import truth_lines
    from LymphNodeMTLLib.core.node_result import NodeResult

    def result(node_id, probability, label, status="ok"):
        return NodeResult(node_id, (0.0, 0.0, 0.0), (0, 0, 0), (1, 1, 1), np.ones((1, 1, 1), bool),
                          probability=probability, predicted_label=label, status=status)

    phantom = [SimpleNamespace(node_id="N1", probability=0.73, label=0),
               SimpleNamespace(node_id="N2", probability=0.10, label=1)]
    lines = truth_lines([result("N1", 0.65, 1), result("N2", float("nan"), -1, "empty_mask")], phantom)
    assert "drawn at random" in " ".join(lines[:2])
    n1 = lines[-2].split()
    assert n1 == ["N1", "0.65", "metastatic", "0.73", "benign"]
    assert lines[-1].split() == ["N2", "—", "(empty_mask)", "0.10", "metastatic"]
