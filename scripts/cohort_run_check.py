"""A cohort run end to end, as a cluster would see it: a manifest of phantom CTs (each with a few
seeded nodes) and two bad cases among them, run by `lymphnode-mtl predict --manifest` in worker
processes, killed (SIGKILL) part-way, resumed, and run again as two shards; prints what each step
did and checks that

- the good cases all finish and the two bad ones are recorded with their one-line reasons;
- the resumed run skips every case finished before the kill (its run.json untouched) and leaves no
  staging folder or lock behind;
- the two shards together give the same summary rows and the same nodes.csv per case as one run.

    .venv/bin/python scripts/cohort_run_check.py --out work-tmp/cohort-check [--cases 20] [--workers 2]

Exit code 0 when every check holds. Each step is a separate `lymphnode-mtl` process (that is what
a scheduler runs), on the CPU without the augmentation passes to keep it short.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LymphNodeMTL"))

BAD = {"truncated": "an interrupted copy of the CT (half its bytes)", "seed_outside": "a seed 30 cm outside the CT"}


def write_cases(folder: Path, n_cases: int, bad_rows: dict[int, str]) -> Path:
    import numpy as np

    from LymphNodeMTLLib.commands.demo import write_demo_inputs
    from LymphNodeMTLLib.core.case import Seed
    from LymphNodeMTLLib.io.seed_reader import read_seeds, write_markups_json

    rows = []
    for index in range(n_cases):
        case_id = f"case{index + 1:02d}"
        ct, seeds, _truth, _phantom = write_demo_inputs(folder / case_id, seed=1000 + index,
                                                        n_nodes=3 + index % 3)
        if bad_rows.get(index) == "truncated":
            data = ct.read_bytes()
            ct.write_bytes(data[: len(data) // 2])
        if bad_rows.get(index) == "seed_outside":
            points = read_seeds(seeds)
            far = np.asarray(points[0].ras) + [0.0, 0.0, 300.0]
            write_markups_json(seeds, [*points, Seed("far", tuple(far))])
        rows.append([case_id, ct.relative_to(folder).as_posix(), seeds.relative_to(folder).as_posix()])
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([["case_id", "volume", "seeds"], *rows])
    return manifest


def cli(args, **popen):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "LymphNodeMTL")}
    return subprocess.Popen([sys.executable, "-m", "LymphNodeMTLLib.commands.cli", "predict", *map(str, args),
                             "--device", "cpu", "--no-uncertainty"], env=env, **popen)


def finished(results: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in results.glob("*/run.json")}


def summary_rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {r["case_id"]: {k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)}


def leftovers(results: Path) -> list[str]:
    return [str(p) for p in results.rglob("*") if p.name.startswith(".lymphnode-mtl")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    bad_rows = {args.cases // 3: "truncated", (2 * args.cases) // 3: "seed_outside"}
    checks: list[tuple[str, bool]] = []

    t0 = time.perf_counter()
    manifest = write_cases(args.out / "inputs", args.cases, bad_rows)
    print(f"manifest: {args.cases} phantom cases (3-5 nodes each), bad rows: "
          + ", ".join(f"case{i + 1:02d} ({BAD[k]})" for i, k in bad_rows.items())
          + f"; written in {time.perf_counter() - t0:.1f} s")

    # 1. a run killed part-way (SIGKILL: no cleanup of its own), then resumed
    results = args.out / "results"
    t0 = time.perf_counter()
    run = cli(["--manifest", manifest, "--out", results, "--workers", args.workers],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = max(1, args.cases // 3)
    while len(finished(results)) < target and run.poll() is None:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    killed_after = time.perf_counter() - t0
    time.sleep(3)  # the workers notice their parent is gone and stop (their case cleans up)
    before = finished(results)
    print(f"killed after {killed_after:.1f} s with {len(before)} of {args.cases} cases finished")
    checks.append(("the kill landed mid-run", 0 < len(before) < args.cases - 2))

    t0 = time.perf_counter()
    resumed = cli(["--manifest", manifest, "--out", results, "--workers", args.workers],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = resumed.communicate()
    resume_s = time.perf_counter() - t0
    rows = summary_rows(results / "summary.csv")
    statuses = {c: r["status"] for c, r in rows.items()}
    print(f"resumed run: {resume_s:.1f} s, exit code {resumed.returncode}: {out.strip()}")
    for line in err.splitlines():
        if " failed: " in line:
            print("  " + line.strip())
    bad_ids = {f"case{i + 1:02d}" for i in bad_rows}
    checks.append(("every good case finished", all(statuses[c] in ("done", "already_done")
                                                    for c in statuses if c not in bad_ids)))
    checks.append(("the two bad cases failed, each with a one-line reason",
                   all(statuses[c] == "failed" and rows[c]["reason"] and "\n" not in rows[c]["reason"]
                       for c in bad_ids)))
    checks.append(("cases finished before the kill were skipped",
                   {c for c, s in statuses.items() if s == "already_done"} == set(before)))
    after = finished(results)
    checks.append(("their run.json untouched", all(after[c] == b for c, b in before.items())))
    checks.append(("no staging folder or lock left", not leftovers(results)))
    checks.append(("exit code 1 (a case failed)", resumed.returncode == 1))
    with open(results / "summary.csv", newline="") as f:
        seconds = [float(r["seconds"]) for r in csv.DictReader(f) if r["status"] == "done"]
    if seconds:
        print(f"per case (resumed run, {args.workers} workers): median {statistics.median(seconds):.1f} s, "
              f"max {max(seconds):.1f} s")

    # 2. the same manifest as two shards (two array tasks), side by side
    sharded = args.out / "sharded"
    t0 = time.perf_counter()
    shards = [cli(["--manifest", manifest, "--out", sharded, "--shard", f"{k}/2"],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for k in (1, 2)]
    codes = [s.wait() for s in shards]
    print(f"two shards side by side: {time.perf_counter() - t0:.1f} s, exit codes {codes}")
    parts = [summary_rows(sharded / f"summary-shard-{k}-of-2.csv") for k in (1, 2)]
    print(f"  shard sizes {len(parts[0])} + {len(parts[1])}")
    checks.append(("the shards are disjoint", not set(parts[0]) & set(parts[1])))
    union = {**parts[0], **parts[1]}
    same_rows = {c: {k: v for k, v in r.items() if k != "status"} for c, r in union.items()} == \
        {c: {k: v for k, v in r.items() if k != "status"} for c, r in rows.items()}
    checks.append(("shards' summaries together = the one run's (but for done/already_done)", same_rows))
    same_tables = all((results / c / "nodes.csv").read_bytes() == (sharded / c / "nodes.csv").read_bytes()
                      for c in rows if c not in bad_ids)
    checks.append(("every case's nodes.csv identical", same_tables))

    print()
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
