"""predict over a cohort manifest: bad cases recorded while the others finish, resumed after a
real kill without redoing finished cases, shards that together are one run, and bad manifests
refused in one line before any work."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cohort_cases import BAD_CASES, assert_manifest_refused, assert_refused_in_one_line, write_cohort
from LymphNodeMTLLib.commands.cli import main
from LymphNodeMTLLib.commands.predict_cohort import predict_cohort
from LymphNodeMTLLib.io.cohort_manifest import CohortCase, select_shard
from LymphNodeMTLLib.outputs.cohort_summary import read_cohort_summary
from LymphNodeMTLLib.outputs.output_folder import STAGING_PREFIX

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--device", "cpu", "--no-uncertainty"]


def _statuses(summary) -> dict[str, str]:
    return {row["case_id"]: row["status"] for row in read_cohort_summary(summary)}


def _leftovers(results: Path) -> list[Path]:
    """Staging folders or locks a run left behind."""
    return [p for p in results.rglob("*") if p.name.startswith(STAGING_PREFIX) or p.name.endswith(".lock")]


def test_two_bad_cases_are_recorded_and_the_others_finish(tmp_path, capsys):
    manifest = write_cohort(tmp_path, 6, bad={1: "truncated", 4: "seed_outside"})
    results = tmp_path / "results"
    code = main(["predict", "--manifest", str(manifest), "--out", str(results), *FAST])
    out, err = capsys.readouterr()
    assert code == 1  # a case failed: a scheduler sees the task as failed
    rows = {row["case_id"]: row for row in read_cohort_summary(results / "summary.csv")}
    assert list(rows) == [f"case{i:02d}" for i in range(6)]  # manifest order
    for index, kind in ((1, "truncated"), (4, "seed_outside")):
        row = rows[f"case{index:02d}"]
        assert row["status"] == "failed" and BAD_CASES[kind] in row["reason"] and "\n" not in row["reason"]
        assert f"case case{index:02d} failed: " in err
        assert not (results / f"case{index:02d}").exists()  # nothing half-written
    for index in (0, 2, 3, 5):
        row = rows[f"case{index:02d}"]
        assert row["status"] == "done" and row["reason"] == "" and row["nodes"] == "1"
        assert {"nodes.seg.nrrd", "nodes.csv", "run.json"} <= {p.name for p in (results / row["out"]).iterdir()}
    assert "6 cases: 4 done, 0 already done, 2 failed" in out
    assert not _leftovers(results)


def _finished_records(results: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in results.glob("*/run.json")}


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(t) for t in text]
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads worker processes from /proc")
def test_a_killed_cohort_resumes_without_redoing_finished_cases(tmp_path, capsys):
    n = 8
    manifest = write_cohort(tmp_path, n)
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "LymphNodeMTL"), "OMP_NUM_THREADS": "1"}
    cohort = subprocess.Popen([sys.executable, "-m", "LymphNodeMTLLib.commands.cli", "predict", "--manifest",
                               str(manifest), "--out", str(results), "--workers", "2", *FAST],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _finished_records(results) and time.monotonic() < deadline and cohort.poll() is None:
            time.sleep(0.02)
        workers = _children(cohort.pid)
        os.kill(cohort.pid, signal.SIGKILL)  # no cleanup of its own: a power cut, an OOM kill
    finally:
        cohort.kill()
        cohort.wait()
    assert workers, "the cohort should have been running its worker processes"
    # its workers notice and stop (a case in flight removes its staging folder)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{w}").exists() for w in workers)
    before = _finished_records(results)
    assert 1 <= len(before) < n, f"the kill should land mid-run; {len(before)} of {n} cases had finished"

    code = main(["predict", "--manifest", str(manifest), "--out", str(results), *FAST])
    out, _err = capsys.readouterr()
    assert code == 0
    statuses = _statuses(results / "summary.csv")
    assert {c for c, s in statuses.items() if s == "already_done"} == set(before)
    assert {c for c, s in statuses.items() if s == "done"} == {f"case{i:02d}" for i in range(n)} - set(before)
    after = _finished_records(results)
    assert all(after[case] == record for case, record in before.items())  # not redone
    assert len(after) == n and f"{n - len(before)} done, {len(before)} already done, 0 failed" in out
    assert not _leftovers(results)


def test_two_shards_together_equal_one_run(tmp_path):
    manifest = write_cohort(tmp_path, 5, bad={2: "seed_outside"})
    whole = predict_cohort(manifest, tmp_path / "whole", device="cpu", uncertainty=False, progress=False)
    first = predict_cohort(manifest, tmp_path / "sharded", device="cpu", uncertainty=False, progress=False,
                           shard="1/2")
    second = predict_cohort(manifest, tmp_path / "sharded", device="cpu", uncertainty=False, progress=False,
                            shard=(2, 2))
    assert first.summary.name == "summary-shard-1-of-2.csv" and second.summary.name == "summary-shard-2-of-2.csv"

    def rows(summary):
        return {r["case_id"]: {k: v for k, v in r.items() if k != "seconds"} for r in read_cohort_summary(summary)}

    shards = [rows(first.summary), rows(second.summary)]
    assert not set(shards[0]) & set(shards[1]) and shards[0] and shards[1]
    assert {**shards[0], **shards[1]} == rows(whole.summary)
    assert rows(whole.summary)["case02"]["status"] == "failed"
    for case in (tmp_path / "whole").glob("case*"):
        assert (case / "nodes.csv").read_bytes() == (tmp_path / "sharded" / case.name / "nodes.csv").read_bytes()
    assert sorted(p.name for p in (tmp_path / "whole").glob("case*")) == \
        sorted(p.name for p in (tmp_path / "sharded").glob("case*"))


def test_shards_are_disjoint_and_cover_the_manifest():
    cases = [CohortCase(f"c{i}", {}, Path(f"/r/c{i}"), i + 2) for i in range(11)]
    for n in (1, 2, 3, 4, 11, 15):
        shares = [select_shard(cases, k, n) for k in range(1, n + 1)]
        ids = [c.case_id for share in shares for c in share]
        assert sorted(ids) == sorted(c.case_id for c in cases) and len(ids) == len(set(ids))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1  # even, whatever the row order


def test_finished_results_of_another_model_are_not_taken_for_this_ones(tmp_path, capsys):
    manifest = write_cohort(tmp_path, 1)
    results = tmp_path / "results"
    predict_cohort(manifest, results, device="cpu", uncertainty=False, progress=False)
    record_path = results / "case00" / "run.json"
    record = json.loads(record_path.read_text())
    record["weights_sha256"] = "0" * 64
    record_path.write_text(json.dumps(record))
    again = predict_cohort(manifest, results, device="cpu", uncertainty=False, progress=False)
    assert again.outcomes[0].status == "failed" and "another model" in again.outcomes[0].reason
    assert "--overwrite" in again.outcomes[0].reason
    assert json.loads(record_path.read_text())["weights_sha256"] == "0" * 64  # left as it was
    replaced = predict_cohort(manifest, results, device="cpu", uncertainty=False, progress=False, overwrite=True)
    assert replaced.outcomes[0].status == "done"
    assert json.loads(record_path.read_text())["weights_sha256"] != "0" * 64
    # --overwrite replaces what is not this run's; this model's finished case is still kept
    record = record_path.read_bytes()
    kept = predict_cohort(manifest, results, device="cpu", uncertainty=False, progress=False, overwrite=True)
    assert kept.outcomes[0].status == "already_done" and record_path.read_bytes() == record


MANIFESTS = {
    "unknown column": ("case_id,volume,seed\na,ct.nrrd,s.csv\n", "unknown column 'seed'"),
    "no volume column": ("case_id,seeds\na,s.csv\n", "no 'volume' column"),
    "empty volume": ("case_id,volume,seeds\na,ct.nrrd,s.csv\nb,,s.csv\n", "row 3 (b) has an empty 'volume'"),
    "no nodes": ("case_id,volume,seeds,prompts\na,ct.nrrd,,\n", "seeds column, its prompts column or both"),
    "repeated case id": ("case_id,volume,seeds\na,1.nrrd,s.csv\na,2.nrrd,s.csv\n", "'a' is already used in row 2"),
    "one folder twice": ("case_id,volume,seeds,out\na,1.nrrd,s.csv,x\nb,2.nrrd,s.csv,x\n", "into the same folder"),
    "one folder in another": ("case_id,volume,seeds,out\na,1.nrrd,s.csv,x\nb,2.nrrd,s.csv,x/b\n", "one inside the other"),
    "no rows": ("case_id,volume,seeds\n", "has no case rows"),
    "case id with a slash": ("case_id,volume,seeds\na/b,1.nrrd,s.csv\n", "cannot name its results folder"),
}


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_a_bad_manifest_is_refused_in_one_line_before_any_work(tmp_path, capsys, name):
    assert_manifest_refused("predict", *MANIFESTS[name], tmp_path, capsys, FAST)


@pytest.mark.parametrize("argv, fragment", [
    (["--manifest", "m.csv", "--seeds", "s.csv"], "--seeds is the manifest's 'seeds' column"),
    (["--volume", "ct.nrrd", "--seeds", "s.csv", "--workers", "2"], "--workers goes with a cohort"),
    (["--manifest", "m.csv", "--shard", "3/2"], "--shard 3/2: give K/N with 1 <= K <= N"),
    (["--manifest", "m.csv", "--shard", "0/2"], "--shard 0/2"),
])
def test_options_that_do_not_fit_a_cohort_are_refused(tmp_path, capsys, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.csv").write_text("case_id,volume,seeds\na,ct.nrrd,s.csv\n")
    assert_refused_in_one_line(["predict", *argv, "--out", "results", *FAST], capsys, fragment, tmp_path / "results")


def test_volume_and_manifest_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--volume", "ct.nrrd", "--manifest", "m.csv", "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_predict_cohort_is_a_light_documented_entry_point_of_the_package():
    code = ("import sys, inspect, LymphNodeMTLLib as L; f = L.predict_cohort; "
            "assert 'Args:' in f.__doc__ and 'Returns:' in f.__doc__ and 'predict_cohort' in L.__all__; "
            "assert list(inspect.signature(f).parameters)[:2] == ['manifest', 'out_dir']; "
            "print(sorted(m for m in ('torch', 'SimpleITK', 'monai') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "LymphNodeMTL")})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"  # torch loads when a cohort runs, not on import
