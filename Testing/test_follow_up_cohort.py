"""follow-up over a cohort manifest of CT pairs: a case whose baseline results folder is missing is
recorded with its one-line reason while the others finish (in worker processes), a rerun skips the
finished cases and retries the failed one, two shards together equal one run, and options or
manifests that do not fit are refused in one line before any work."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cohort_cases import assert_manifest_refused, assert_refused_in_one_line
from follow_up_cases import read_table, write_pair
from LymphNodeMTLLib.commands.cli import main
from LymphNodeMTLLib.commands.follow_up_cohort import follow_up_cohort
from LymphNodeMTLLib.commands.predict import predict_to_folder
from LymphNodeMTLLib.core.node_status import NOT_FOUND
from LymphNodeMTLLib.inference.engine import NodeEngine
from LymphNodeMTLLib.outputs.cohort_summary import read_cohort_summary
from LymphNodeMTLLib.phantoms.follow_up_pair import generate_follow_up_pair

ROOT = Path(__file__).resolve().parents[1]
# the fast setup: no test-time augmentation, no B-spline stage (a follow-up in about 5 s on a CPU)
FAST = ["--device", "cpu", "--no-uncertainty", "--rigid-affine-only"]
FAST_KW = {"device": "cpu", "uncertainty": False, "deformable": False, "progress": False}
MISSING = "results0-never-written"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """One small phantom pair (three baseline nodes, one new) and its baseline results; a manifest
    of three cases: the pair with its new node's seeds, the pair without them, and a case whose
    baseline results folder does not exist."""
    pair = generate_follow_up_pair(np.random.default_rng(0), 3, 1, spacing=(1.0, 1.0, 2.5), direction=np.eye(3))
    folder = tmp_path_factory.mktemp("cohort")
    paths = write_pair(folder / "inputs", pair)
    predict_to_folder(paths["ct0"], paths["seeds0"], folder / "inputs" / "r0",
                      engine=NodeEngine(device="cpu", uncertainty=False))
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["case_id", "baseline", "baseline_results", "follow_up", "seeds"])
        writer.writerow(["with_new", "inputs/ct0.nrrd", "inputs/r0", "inputs/ct1.nrrd", "inputs/new.mrk.json"])
        writer.writerow(["no_results", "inputs/ct0.nrrd", f"inputs/{MISSING}", "inputs/ct1.nrrd", ""])
        writer.writerow(["without_new", "inputs/ct0.nrrd", "inputs/r0", "inputs/ct1.nrrd", ""])
    return pair, manifest


def _rows(summary) -> dict[str, dict]:
    """The summary's rows by case, less the wall time (which no two runs share)."""
    return {r["case_id"]: {k: v for k, v in r.items() if k != "seconds"} for r in read_cohort_summary(summary)}


@pytest.fixture(scope="module")
def first_run(cohort, tmp_path_factory):
    """The whole manifest from the command line, two cases side by side in worker processes."""
    _, manifest = cohort
    results = tmp_path_factory.mktemp("run") / "results"
    code = main(["follow-up", "--manifest", str(manifest), "--out", str(results), "--workers", "2", *FAST])
    return code, results, _rows(results / "summary.csv")


def test_the_bad_case_is_recorded_and_the_others_finish(cohort, first_run, capsys):
    pair, manifest = cohort
    code, results, rows = first_run
    assert code == 1  # a case failed: a scheduler sees the task as failed
    assert list(rows) == ["with_new", "no_results", "without_new"]  # manifest order
    bad = rows["no_results"]
    assert bad["status"] == "failed" and "is not a folder" in bad["reason"] and MISSING in bad["reason"]
    assert "\n" not in bad["reason"] and not (results / "no_results").exists()
    vanished = sum(f.fate == "vanished" for f in pair.fates)
    for case_id, nodes in (("with_new", len(pair.baseline.nodes) + len(pair.new_ids)),
                           ("without_new", len(pair.baseline.nodes))):
        row, folder = rows[case_id], results / case_id
        assert row["status"] == "done" and row["reason"] == "" and row["nodes"] == str(nodes)
        table = read_table(folder)
        assert len(table) == nodes and row["not_found"] == str(vanished)
        assert sum(r["status"] == NOT_FOUND for r in table.values()) == vanished
        response = json.loads((folder / "response.json").read_text())
        assert row["response"] == response["category"]
        assert row["baseline_sum_mm"] == f"{response['baseline_sum_mm']:.4g}"
        record = json.loads((folder / "run.json").read_text())
        inputs = manifest.parent / "inputs"
        assert record["inputs"] == {"baseline": str(inputs / "ct0.nrrd"), "baseline_results": str(inputs / "r0"),
                                    "follow_up": str(inputs / "ct1.nrrd"),
                                    "seeds": str(inputs / "new.mrk.json") if case_id == "with_new" else None}
    # the pair with its new node's seeds: the response its truth decides
    assert rows["with_new"]["response"] == pair.response.category


def test_a_rerun_skips_finished_cases_and_retries_the_failed_one(cohort, first_run, capsys):
    _, manifest = cohort
    _, results, _ = first_run
    records = {case: (results / case / "run.json").read_bytes() for case in ("with_new", "without_new")}
    again = ["follow-up", "--manifest", str(manifest), "--out", str(results), *FAST]
    code = main(again)
    out, err = capsys.readouterr()
    assert code == 1 and "3 cases: 0 done, 2 already done, 1 failed" in out
    assert "case no_results failed: " in err and len([line for line in err.splitlines() if "failed" in line]) == 1
    # its baseline results in place, the failed case runs; the finished ones are not redone
    shutil.copytree(manifest.parent / "inputs" / "r0", manifest.parent / "inputs" / MISSING)
    try:
        code = main(again)
        out, _ = capsys.readouterr()
    finally:
        shutil.rmtree(manifest.parent / "inputs" / MISSING)
    assert code == 0 and "3 cases: 1 done, 2 already done, 0 failed" in out
    rows = _rows(results / "summary.csv")
    assert {c: r["status"] for c, r in rows.items()} == \
        {"with_new": "already_done", "no_results": "done", "without_new": "already_done"}
    assert rows["no_results"]["nodes"] == rows["without_new"]["nodes"]  # the same pair, the same seeds
    assert all((results / case / "run.json").read_bytes() == record for case, record in records.items())


def test_two_shards_together_equal_one_run(cohort, first_run, tmp_path):
    _, manifest = cohort
    _, _, whole = first_run
    first = follow_up_cohort(manifest, tmp_path / "sharded", shard="1/2", **FAST_KW)
    second = follow_up_cohort(manifest, tmp_path / "sharded", shard=(2, 2), **FAST_KW)
    assert first.summary.name == "summary-shard-1-of-2.csv" and second.summary.name == "summary-shard-2-of-2.csv"
    shards = [_rows(first.summary), _rows(second.summary)]
    assert list(shards[0]) == ["with_new", "without_new"] and list(shards[1]) == ["no_results"]
    assert {**shards[0], **shards[1]} == whole


MANIFESTS = {
    "no baseline_results column": ("case_id,baseline,follow_up\na,0.nrrd,1.nrrd\n", "no 'baseline_results' column"),
    "empty follow_up": ("case_id,baseline,baseline_results,follow_up\na,0.nrrd,r0,\n", "has an empty 'follow_up'"),
    "predict's columns": ("case_id,volume,seeds\na,ct.nrrd,s.csv\n", "unknown column 'volume'"),
}


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_a_manifest_that_is_not_one_of_pairs_is_refused_in_one_line(tmp_path, capsys, name):
    assert_manifest_refused("follow-up", *MANIFESTS[name], tmp_path, capsys, FAST)


@pytest.mark.parametrize("argv, fragment", [
    (["--manifest", "m.csv", "--baseline-results", "r0"], "--baseline-results is the manifest's 'baseline_results'"),
    (["--manifest", "m.csv", "--follow-up-series-uid", "1.2"], "'follow_up_series_uid' column"),
    (["--baseline", "ct0.nrrd", "--baseline-results", "r0"], "--baseline needs --follow-up CT1"),
    (["--baseline", "ct0.nrrd", "--baseline-results", "r0", "--follow-up", "ct1.nrrd", "--shard", "1/2"],
     "--shard goes with a cohort"),
])
def test_options_that_do_not_fit_are_refused(tmp_path, capsys, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.csv").write_text("case_id,baseline,baseline_results,follow_up\na,0.nrrd,r0,1.nrrd\n")
    assert_refused_in_one_line(["follow-up", *argv, "--out", "results", *FAST], capsys, fragment,
                               tmp_path / "results")


def test_follow_up_cohort_is_a_light_documented_entry_point_of_the_package():
    code = ("import sys, inspect, LymphNodeMTLLib as L; f = L.follow_up_cohort; "
            "assert 'Args:' in f.__doc__ and 'Returns:' in f.__doc__ and 'follow_up_cohort' in L.__all__; "
            "assert list(inspect.signature(f).parameters)[:2] == ['manifest', 'out_dir']; "
            "print(sorted(m for m in ('torch', 'SimpleITK', 'monai') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "LymphNodeMTL")})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"  # torch loads when a cohort runs, not on import
