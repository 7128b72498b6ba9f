"""One click's round trip: a radiologist adds a click to a node and gets its refined mask back.

    .venv/bin/python benchmarks/bench_prompts.py --device cpu --json work-tmp/bench-prompts-cpu.json

On a 512x512x300 CT (benchmarks/bench_inference.py's phantom), with the model resident, times:

  - the engine called in-process (NodeEngine.refine): one more click on a node that already has
    k - 1 (the steps before it remembered, as in a clicking session: the new step and the
    re-classification of its mask run), for k = 1..3; the same node's whole chain run from scratch
    (nothing remembered); a node from its long-axis line alone;
  - the same click through a local inference server with the CT already on it: submit the refine
    job, wait (long poll), decode the node's result; and the server's own share of it.

Each repeat clicks another point (a new chain step); figures are wall-clock medians after a warm-up.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "LymphNodeMTL"))
sys.path.insert(0, str(HERE))

from bench_inference import big_phantom, print_ms_rows, write_figures  # noqa: E402

from LymphNodeMTLLib.core.case import Case  # noqa: E402
from LymphNodeMTLLib.core.node_prompts import Click, NodePrompts  # noqa: E402
from LymphNodeMTLLib.inference.engine import NodeEngine  # noqa: E402
from LymphNodeMTLLib.outputs.run_record import package_versions  # noqa: E402
from LymphNodeMTLLib.server.client import InferenceClient  # noqa: E402
from LymphNodeMTLLib.server.launcher import start_server  # noqa: E402


def clicks_around(seed, n: int, repeat: int):
    """n clicks near a seed (positive, then alternating), shifted by the repeat so each is new."""
    base = np.asarray(seed.ras, dtype=float)
    offsets = [np.array([2.0 + 0.3 * repeat, 0.0, 0.0]), np.array([0.0, 6.0, 0.3 * repeat]),
               np.array([-9.0 - 0.2 * repeat, 0.0, 0.0])]
    return tuple(Click(tuple(base + offsets[i]), i != 2) for i in range(n))


def median_time(fn, repeats: int, warm_up: int = 1) -> tuple[float, list[float]]:
    for n in range(warm_up):
        fn(-1 - n)
    times = []
    for n in range(repeats):
        t0 = time.perf_counter()
        fn(n)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def engine_figures(engine: NodeEngine, case: Case, seed, repeats: int) -> dict:
    figures = {}
    for k in (1, 2, 3):
        def one_more(n, k=k):
            prompts = NodePrompts(seed.node_id, seed=seed.ras, clicks=clicks_around(seed, k, n))
            engine.refine(case, prompts.first_clicks(k - 1))  # the clicks before: remembered
            t0 = time.perf_counter()
            engine.refine(case, prompts)
            return time.perf_counter() - t0

        runs = [one_more(n) for n in range(-1, repeats)][1:]
        figures[f"engine_click_{k}_s"] = statistics.median(runs)

    def from_scratch(n):
        engine.clear_volume_cache()  # nothing remembered
        engine.refine(case, NodePrompts(seed.node_id, seed=seed.ras, clicks=clicks_around(seed, 3, n)))

    figures["engine_three_clicks_from_scratch_s"], _ = median_time(from_scratch, repeats)
    engine.clear_volume_cache()
    ras = np.asarray(seed.ras)

    def line(n):
        shift = np.array([0.0, 0.1 * n, 0.0])
        engine.refine(case, NodePrompts(seed.node_id, line=(tuple(ras - [6.0, 0, 0] + shift), tuple(ras + [6.0, 0, 0] + shift))))

    figures["engine_line_s"], _ = median_time(line, repeats)
    return figures


def server_figures(client: InferenceClient, vid: str, seed, repeats: int) -> dict:
    def one_click(n):
        prompts = NodePrompts(seed.node_id, seed=seed.ras, clicks=clicks_around(seed, 1, n))
        t0 = time.perf_counter()
        job = client.run_job(refine_job_of(prompts), vid)
        return time.perf_counter() - t0, job.last_job["finished_at"] - job.last_job["started_at"]

    runs = [one_click(n) for n in range(-1, repeats)][1:]
    return {"server_click_round_trip_s": statistics.median(t for t, _ in runs),
            "server_click_engine_s": statistics.median(e for _, e in runs),
            "server_click_round_trip_all_s": [t for t, _ in runs]}


def refine_job_of(prompts):
    from LymphNodeMTLLib.server.job_steps import refine_job

    return refine_job([prompts])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--shape", default="300,512,512", help="CT shape k,j,i (default 300,512,512)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    image, geometry, seeds = big_phantom(shape)
    ct = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    del image
    seed = seeds[0]
    engine = NodeEngine(device=args.device)
    case = Case(ct.astype(np.float32), geometry, [seed])
    figures = {"device": str(engine.device), "model_id": engine.model_id, "shape_kji": list(shape),
               "repeats": args.repeats, "python": platform.python_version(), "packages": package_versions()}
    figures.update(engine_figures(engine, case, seed, args.repeats))
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "server.log", "w") as log, \
            start_server(["--port", "0", "--device", args.device], stderr=log) as server:
        client = InferenceClient(server.url)
        vid = client.upload_volume(ct, geometry.ijk_to_ras)
        figures.update(server_figures(client, vid, seed, args.repeats))
        client.close()
    print(f"CT {shape[2]}x{shape[1]}x{shape[0]}, device {figures['device']}, model {figures['model_id']}, "
          f"median of {args.repeats}")
    rows = [("one more click (1st), engine in-process", "engine_click_1_s"),
            ("one more click (2nd), engine in-process", "engine_click_2_s"),
            ("one more click (3rd), engine in-process", "engine_click_3_s"),
            ("three clicks from scratch, engine", "engine_three_clicks_from_scratch_s"),
            ("a node from its long-axis line, engine", "engine_line_s"),
            ("one click, local server round trip", "server_click_round_trip_s"),
            ("  of which the engine (server clock)", "server_click_engine_s")]
    print_ms_rows(figures, rows)
    write_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
