"""Whole-process benchmark of `lymphnode-mtl predict`: a new process per run, as a user meets it
(Python start, imports, model load, reading a compressed 512 x 512 x 300 int16 CT, the network,
writing the results), with and without uncertainty, and optionally against another checkout.

    .venv/bin/python benchmarks/bench_predict_process.py --data work-tmp/bench-process --repeats 5
    .venv/bin/python benchmarks/bench_predict_process.py --data work-tmp/bench-process --repeats 5 \\
        --baseline /path/to/another/checkout

The first call writes the CT (`ct.nrrd`, the phantom of bench_inference.py stored as int16 HU
with gzip, as 3D Slicer saves it) and `seeds.csv` (its first --seeds seeds) into --data; later
calls reuse them. Each timed run is `python -m LymphNodeMTLLib.commands.cli predict ... --device
cpu --overwrite` in a fresh process; the runs alternate between the variants (A B A B ...) so a
drifting machine weighs on all of them alike. Prints, per variant, the median, min and max wall
seconds and the median ratio to the first variant, pair by pair; with --json also writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0] / "LymphNodeMTL"))
sys.path.insert(0, str(HERE))

from LymphNodeMTLLib.io.volume_reader import write_volume  # noqa: E402


def make_data(folder: Path, n_seeds: int) -> tuple[Path, Path]:
    """ct.nrrd and seeds.csv in `folder`, written once."""
    ct, seeds_csv = folder / "ct.nrrd", folder / f"seeds-{n_seeds}.csv"
    if not ct.is_file() or not seeds_csv.is_file():
        from bench_inference import big_phantom

        folder.mkdir(parents=True, exist_ok=True)
        image, geometry, seeds = big_phantom()
        if not ct.is_file():
            write_volume(ct, np.clip(np.rint(image), -1024, 3071).astype(np.int16), geometry)
        lines = ["id,r,a,s"] + [f"{s.node_id},{s.ras[0]:.3f},{s.ras[1]:.3f},{s.ras[2]:.3f}" for s in seeds[:n_seeds]]
        seeds_csv.write_text("\n".join(lines) + "\n")
    return ct, seeds_csv


def predict_command(checkout: Path, ct: Path, seeds: Path, out: Path, extra: list[str]) -> tuple[list[str], dict]:
    env = dict(os.environ, PYTHONPATH=str(checkout / "LymphNodeMTL"))
    cmd = [sys.executable, "-m", "LymphNodeMTLLib.commands.cli", "predict", "--volume", str(ct), "--seeds",
           str(seeds), "--out", str(out), "--device", "cpu", "--overwrite", *extra]
    return cmd, env


def run_once(cmd, env) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout[-2000:]}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="work-tmp/bench-process", help="folder for the CT, seeds and outputs")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--baseline", default="", help="another checkout to time the same way (e.g. main)")
    p.add_argument("--json", default="")
    args = p.parse_args()

    data = Path(args.data).resolve()
    ct, seeds = make_data(data, args.seeds)
    here = HERE.parents[0]
    variants = {"default": (here, []), "no uncertainty": (here, ["--no-uncertainty"])}
    if args.baseline:
        base = Path(args.baseline).resolve()
        variants["baseline default"] = (base, [])
        variants["baseline no uncertainty"] = (base, ["--no-uncertainty"])
    commands = {name: predict_command(root, ct, seeds, data / f"out-{n}", extra)
                for n, (name, (root, extra)) in enumerate(variants.items())}
    for cmd, env in commands.values():  # warm-up: file cache, .pyc
        run_once(cmd, env)
    times = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, (cmd, env) in commands.items():
            times[name].append(run_once(cmd, env))
    first = next(iter(times.values()))
    print(f"{args.seeds} seeds, CT {ct} ({ct.stat().st_size / 2**20:.0f} MiB), {args.repeats} runs each, wall s")
    figures = {}
    for name, values in times.items():
        ratio = statistics.median(a / b for a, b in zip(values, first))
        figures[name] = {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values),
                         "median_ratio_to_first": ratio, "runs_s": values}
        print(f"  {name:<26} median {statistics.median(values):6.2f}  min {min(values):6.2f}  "
              f"max {max(values):6.2f}  ratio to '{next(iter(times))}' {ratio:5.2f}")
    for name, (cmd, env) in commands.items():
        print(f"  {name}: PYTHONPATH={env['PYTHONPATH']} {' '.join(cmd)}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
