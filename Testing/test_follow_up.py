"""follow-up end to end on phantom pairs with known truth: the patient moved (rigid up to 20 mm and
10 degrees, plus a breathing-like deformation), nodes grew, shrank, vanished or stayed, a node
appeared. Every surviving node found, its change measured, the response category right, vanished
nodes not_found with no mask; the follow-up in other encodings gives the same table; bad input
refused with one line and nothing written."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from follow_up_cases import (
    flipped,
    oblique,
    read_table,
    score_against_truth,
    write_dicom_series,
    write_pair,
)
from LymphNodeMTLLib.commands.cli import main
from LymphNodeMTLLib.commands.follow_up import follow_up_to_folder
from LymphNodeMTLLib.commands.predict import predict_to_folder
from LymphNodeMTLLib.core import node_status
from LymphNodeMTLLib.core.case import Case
from LymphNodeMTLLib.core.geometry import VolumeGeometry
from LymphNodeMTLLib.core.node_result import NodeResult
from LymphNodeMTLLib.inference.engine import NodeEngine
from LymphNodeMTLLib.inference.node_carrying import CarriedNode, check_found
from LymphNodeMTLLib.io.volume_reader import write_volume
from LymphNodeMTLLib.outputs.segmentation_writer import read_segmentation
from LymphNodeMTLLib.phantoms.follow_up_pair import generate_follow_up_pair

REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "chest_noncontrast_lung1.nrrd"


@pytest.fixture(scope="module")
def engine():
    return NodeEngine(device="cpu")


@pytest.fixture(scope="module")
def phantom_pair(tmp_path_factory, engine):
    """Progression (grown targets, a new pathological node), a node vanished and one unchanged, on a
    synthetic body."""
    pair = generate_follow_up_pair(np.random.default_rng(0), 5, 1, spacing=(0.8, 0.8, 2.0), direction=np.eye(3))
    assert pair.decisive and {f.fate for f in pair.fates} == {"vanished", "grown", "unchanged", "new"}
    folder = tmp_path_factory.mktemp("pair")
    paths = write_pair(folder, pair)
    predict_to_folder(paths["ct0"], paths["seeds0"], folder / "r0", engine=engine)
    paths["r0"] = folder / "r0"
    return pair, paths


@pytest.fixture(scope="module")
def reference_run(phantom_pair, tmp_path_factory, engine):
    """The follow-up of the pair as written (NRRD, axial)."""
    _, paths = phantom_pair
    out = tmp_path_factory.mktemp("reference") / "r1"
    _follow_up(paths, paths["ct1"], out, engine)
    return out


def _follow_up(paths, ct1, out, engine, **kw):
    return follow_up_to_folder(paths["ct0"], paths["r0"], ct1, out, paths["new"], engine=engine, **kw)


def _check_against_truth(out: Path, pair) -> dict:
    score = score_against_truth(out, pair)
    assert score["missed"] == []
    assert max(score["centre_mm"].values()) <= 3.0, score["centre_mm"]
    assert float(np.median(list(score["change_error_mm"].values()))) <= 1.0, score["change_error_mm"]
    assert score["vanished"] and all(s == (node_status.NOT_FOUND, True) for s in score["vanished"].values())
    response = json.loads((out / "response.json").read_text())
    assert response["category"] == pair.response.category
    assert response["target_nodes"] == pair.response.targets
    return score


def test_follow_up_finds_the_nodes_measures_the_change_and_suggests_the_response(phantom_pair, reference_run,
                                                                                 tmp_path, capsys):
    """From the command line, the follow-up CT a DICOM series: the same table as from its NRRD."""
    pair, paths = phantom_pair
    out = tmp_path / "r1"
    series = write_dicom_series(tmp_path / "ct1_dicom", np.round(pair.follow_up.image), pair.follow_up.geometry)
    code = main(["follow-up", "--baseline", str(paths["ct0"]), "--baseline-results", str(paths["r0"]),
                 "--follow-up", str(series), "--seeds", str(paths["new"]), "--out", str(out),
                 "--device", "cpu", "--no-uncertainty", "--report", "--dicom-seg"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "Suggested RECIST 1.1 nodal response" in stdout and "to be confirmed" in stdout
    _check_against_truth(out, pair)
    _check_same_table(reference_run, out, tolerance=0.5, median_tolerance=0.1)
    table = read_table(out)
    assert list(table) == [n.node_id for n in pair.baseline.nodes] + pair.new_ids
    assert table[pair.new_ids[0]]["status"] == "new" and table[pair.new_ids[0]]["baseline_short_axis_mm"] == ""
    # the follow-up segmentation names and numbers its segments as the baseline did
    _, _, before = read_segmentation(paths["r0"] / "nodes.seg.nrrd")
    _, geometry, after = read_segmentation(out / "nodes.seg.nrrd")
    assert [(s["id"], s["name"]) for s in after[:len(before)]] == [(s["id"], s["name"]) for s in before]
    assert geometry.same_grid(pair.follow_up.geometry)
    record = json.loads((out / "run.json").read_text())
    stages = record["registration"]["stages"]
    assert [s["name"] for s in stages][:2] == ["rigid", "affine"] and all(math.isfinite(s["metric"]) for s in stages)
    assert stages[0]["metric"] < stages[0]["metric_before"]  # the rigid stage improved on no motion
    assert set(record["outputs"]) == {"nodes.seg.nrrd", "nodes.csv", "response.json", "run.json", "nodes.dcm",
                                      "report.png", "report.html"}
    assert "NOT FOR CLINICAL USE" in (out / "report.html").read_text()


def _check_same_table(reference: Path, out: Path, tolerance: float, median_tolerance: float) -> None:
    expected, got = read_table(reference), read_table(out)
    assert {k: r["status"] for k, r in got.items()} == {k: r["status"] for k, r in expected.items()}
    differences = [abs(float(got[node_id][column]) - float(row[column]))
                   for node_id, row in expected.items() for column in ("follow_up_short_axis_mm", "short_axis_change_mm")
                   if row[column]]
    assert max(differences) <= tolerance and float(np.median(differences)) <= median_tolerance, differences
    assert json.loads((out / "response.json").read_text())["category"] == \
        json.loads((reference / "response.json").read_text())["category"]


@pytest.mark.parametrize("encoding", ["flipped_nifti", "oblique"])
def test_the_follow_up_in_other_encodings_gives_the_same_table(phantom_pair, reference_run, tmp_path, engine,
                                                               encoding):
    pair, paths = phantom_pair
    reference = reference_run
    image, geometry = np.round(pair.follow_up.image), pair.follow_up.geometry
    if encoding == "flipped_nifti":
        ct1 = tmp_path / "ct1.nii.gz"
        write_volume(ct1, *flipped(image, geometry))
    else:
        ct1 = tmp_path / "ct1_oblique.nrrd"
        write_volume(ct1, *oblique(image, geometry))
    out = tmp_path / encoding
    _follow_up(paths, ct1, out, engine)
    _check_against_truth(out, pair)
    # the same voxels stored otherwise give the same numbers; an oblique grid resamples the CT into
    # another image, on which the engine's own masks of 5-mm nodes differ by up to a voxel or two
    _check_same_table(reference_run, out, *((1.5, 0.75) if encoding == "oblique" else (0.5, 0.1)))


@pytest.mark.skipif(not REAL_CT.exists(), reason="the shared real CT is not here")
def test_follow_up_on_a_real_background(tmp_path, engine):
    """Partial response: nodes shrunk, vanished, unchanged and a new one, in a real chest CT's fat."""
    pair = generate_follow_up_pair(np.random.default_rng(6), 5, 1, background=str(REAL_CT), spacing=(1.0, 1.0, 5.0),
                                   field_of_view_mm=(150.0, 150.0, 110.0))
    assert pair.decisive and {f.fate for f in pair.fates} == {"vanished", "shrunk", "unchanged", "new"}
    paths = write_pair(tmp_path, pair)
    predict_to_folder(paths["ct0"], paths["seeds0"], tmp_path / "r0", engine=engine)
    paths["r0"] = tmp_path / "r0"
    _follow_up(paths, paths["ct1"], tmp_path / "r1", engine)
    _check_against_truth(tmp_path / "r1", pair)


def test_a_mask_on_tissue_that_was_something_else_at_baseline_is_not_the_node():
    """A node gone at follow-up, a vessel beside it at both times: a mask on the vessel is no
    finding of the node; a mask where the node was is."""
    import SimpleITK as sitk

    geometry = VolumeGeometry(np.diag([1.0, 1.0, 1.0, 1.0]), (40, 40, 40))
    k, j, i = np.mgrid[:40, :40, :40]
    follow_image = np.full((40, 40, 40), -100.0, dtype=np.float32)
    vessel = (i - 28) ** 2 + (j - 20) ** 2 <= 16  # a tube along S, 8 mm from the node's centre
    follow_image[vessel] = 45.0
    node = (i - 20) ** 2 + (j - 20) ** 2 + (k - 20) ** 2 <= 16
    baseline_image = follow_image.copy()
    baseline_image[node] = 45.0
    baseline, follow_up = Case(baseline_image, geometry), Case(follow_image, geometry)
    baseline_node = NodeResult("N1", (20.0, 20.0, 20.0), (16, 16, 16), (25, 25, 25), node[16:25, 16:25, 16:25])
    carried = CarriedNode("N1", (20.0, 20.0, 20.0), (20.0, 20.0, 20.0),
                          checks={"transform": sitk.CompositeTransform([sitk.TranslationTransform(3)])})

    def found(mask):
        where = np.argwhere(mask)
        start, stop = where.min(axis=0), where.max(axis=0) + 1
        result = NodeResult("N1", (20.0, 20.0, 20.0), tuple(start), tuple(stop),
                            mask[tuple(slice(a, b) for a, b in zip(start, stop))])
        return check_found(carried, result, baseline, baseline_node, follow_up)

    assert found(vessel & (np.abs(k - 20) <= 6)) == node_status.NOT_FOUND
    assert carried.checks["reason"] == "mask on other tissue of the baseline"
    assert found(node) == node_status.OK


def test_bad_follow_up_input_is_refused_with_one_line_and_nothing_written(phantom_pair, tmp_path, capsys):
    _, paths = phantom_pair
    base = ["follow-up", "--baseline", str(paths["ct0"]), "--follow-up", str(paths["ct1"]), "--device", "cpu"]
    clash = tmp_path / "clash.csv"
    clash.write_text("id,r,a,s\nN01,0,0,0\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--baseline-results", str(paths["r0"]), "--out", str(paths["r0"])], "is the baseline results folder"),
        (["--baseline-results", str(empty), "--out", str(tmp_path / "o1")], "holds no nodes.seg.nrrd"),
        (["--baseline-results", str(paths["r0"]), "--out", str(tmp_path / "o2"), "--seeds", str(clash)],
         "are baseline nodes' ids"),
    ]
    for extra, message in cases:
        code = main(base + extra)
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    assert sorted(p.name for p in paths["r0"].iterdir()) == ["nodes.csv", "nodes.seg.nrrd", "run.json"]


def test_a_follow_up_of_another_body_places_no_node_surely(phantom_pair, engine):
    """Another patient's CT as the follow-up: the CTs do not match once registered, so no node is
    said found or gone, and the response is not evaluable."""
    from LymphNodeMTLLib.inference.follow_up_study import run_follow_up
    from LymphNodeMTLLib.outputs.baseline_results import read_baseline_results

    pair, paths = phantom_pair
    other = generate_follow_up_pair(np.random.default_rng(4), 5, 1, spacing=(0.8, 0.8, 2.0), direction=np.eye(3))
    baseline = Case(np.round(pair.baseline.image), pair.baseline.geometry)
    nodes = read_baseline_results(paths["r0"], baseline.image, baseline.geometry)
    study = run_follow_up(engine, baseline, nodes, Case(other.follow_up.image, other.follow_up.geometry),
                          deformable=False)
    assert study.registration.correlation < 0.9
    assert {c.status for c in study.changes} == {node_status.REGISTRATION_UNCERTAIN}
    assert study.response.category == "not_evaluable"


def test_the_server_runs_a_follow_up_job_as_the_command_does(phantom_pair, reference_run):
    """Through the inference server's service (as the Slicer module would send it): the baseline
    nodes as masks on the baseline CT, the new nodes as seeds; the same statuses and response."""
    from LymphNodeMTLLib.core.case import Seed
    from LymphNodeMTLLib.core.errors import InputError
    from LymphNodeMTLLib.io.volume_reader import read_volume
    from LymphNodeMTLLib.outputs.baseline_results import read_baseline_results
    from LymphNodeMTLLib.server.inference_service import InferenceService

    pair, paths = phantom_pair
    service = InferenceService(device="cpu")
    try:
        image0, geometry0, _ = read_volume(paths["ct0"])
        image1, geometry1, _ = read_volume(paths["ct1"])
        baseline_id = service.add_volume(image0, geometry0.ijk_to_ras)
        follow_id = service.add_volume(image1, geometry1.ijk_to_ras)
        masks = read_baseline_results(paths["r0"], image0, geometry0)
        new = [Seed(n.node_id, n.seed_ras) for n in pair.follow_up.nodes if n.node_id in pair.new_ids]
        with pytest.raises(InputError, match="needs baseline_volume_id"):
            service.submit("follow_up", follow_id, masks=masks, seeds=new)
        job = service.submit("follow_up", follow_id, masks=masks, seeds=new, baseline_volume_id=baseline_id,
                             options={"uncertainty": False})
        assert job.finished.wait(300) and job.state == "done", job.error
        summary = job.to_json()["follow_up"]
        expected = read_table(reference_run)
        assert {row["id"]: row["status"] for row in summary["nodes"]} == {k: r["status"] for k, r in expected.items()}
        assert summary["response"]["category"] == pair.response.category
        assert [r["node_id"] for r in job.results] == list(expected)
    finally:
        service.close()
