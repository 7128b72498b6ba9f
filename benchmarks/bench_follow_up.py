"""Follow-up benchmark: synthetic pairs with known truth (phantoms/follow_up_pair.py), on a synthetic
body and on real CT backgrounds, run end to end (predict on the baseline, then follow-up, both from
files) and scored against the truth:

- surviving nodes found (a mask), and their mask centre's distance to the true centre (mm);
- the short-axis change's error against the truth's (mm), median and 90th percentile;
- the response category against the truth's, per pair;
- vanished nodes reported not_found with no mask;
- time per follow-up run and per registration.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_follow_up.py --pairs 4 --json work-tmp/follow-up.json

Each background gets --pairs pairs, the scenarios (complete response, partial response, stable,
progression) in turn; a draw whose truth sits on a threshold (not decisive) is replaced by the next
seed and counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "LymphNodeMTL"))
sys.path.insert(0, str(ROOT / "Testing"))  # the tests' pair writer and scorer: one way to score

from follow_up_cases import score_against_truth, write_pair  # noqa: E402
from LymphNodeMTLLib.commands.follow_up import follow_up_to_folder  # noqa: E402
from LymphNodeMTLLib.commands.predict import predict_to_folder  # noqa: E402
from LymphNodeMTLLib.core.errors import InputError  # noqa: E402
from LymphNodeMTLLib.inference.engine import NodeEngine  # noqa: E402
from LymphNodeMTLLib.phantoms.follow_up_pair import SCENARIOS, generate_follow_up_pair  # noqa: E402

SHARED_CT = ROOT.parent / "shared" / "data" / "ct"
BACKGROUNDS = {
    "synthetic": {"spacing": (0.8, 0.8, 2.0), "direction": np.eye(3)},
    "chest_noncontrast_lung1": {"background": SHARED_CT / "chest_noncontrast_lung1.nrrd", "spacing": (1.0, 1.0, 5.0),
                                "field_of_view_mm": (150.0, 150.0, 110.0)},
    # the same CT at its own 0.57 x 0.57 x 5 mm grid, a wider field of view (the mediastinal crop
    # beside it has too little fat for target-sized nodes away from its faces)
    "chest_noncontrast_lung1_native": {"background": SHARED_CT / "chest_noncontrast_lung1.nrrd",
                                       "field_of_view_mm": (180.0, 180.0, 150.0)},
}


def _pair(seed: int, scenario: str, options: dict):
    options = dict(options)
    if "background" in options:
        options["background"] = str(options["background"])
    nodes = options.pop("nodes", 5)
    return generate_follow_up_pair(np.random.default_rng(seed), nodes, 1, scenario=scenario, **options)


def run(pairs_per_background: int, engine: NodeEngine, work: Path) -> dict:
    rows, skipped = [], 0
    for name, options in BACKGROUNDS.items():
        if "background" in options and not Path(options["background"]).exists():
            print(f"{name}: not here, skipped")
            continue
        seed = 0
        for n in range(pairs_per_background):
            scenario = SCENARIOS[n % len(SCENARIOS)]
            pair = None
            for _ in range(20):
                try:
                    candidate = _pair(1000 + seed, scenario, options)
                except InputError:  # too little fat in this background for the nodes
                    candidate = None
                seed += 1
                if candidate is not None and candidate.decisive:
                    pair = candidate
                    break
                skipped += 1
            if pair is None:
                print(f"{name}: no decisive {scenario} pair in 20 draws, skipped")
                continue
            folder = work / f"{name}-{n}"
            paths = write_pair(folder, pair)
            predict_to_folder(paths["ct0"], paths["seeds0"], folder / "r0", engine=engine)
            t0 = time.perf_counter()
            study = follow_up_to_folder(paths["ct0"], folder / "r0", paths["ct1"], folder / "r1", paths["new"],
                                        engine=engine)
            seconds = time.perf_counter() - t0
            score = score_against_truth(folder / "r1", pair)
            row = {"background": name, "seed": 1000 + seed - 1, "scenario": scenario, "motion": pair.motion,
                   "truth": pair.response.category, "suggested": study.response.category,
                   "found": len(score["centre_mm"]), "missed": score["missed"],
                   "centre_mm": score["centre_mm"], "change_error_mm": score["change_error_mm"],
                   "vanished": {k: list(v) for k, v in score["vanished"].items()},
                   "seconds": round(seconds, 2), "registration_s": round(study.timings["registration"], 2),
                   "registration_stages": study.registration.record()["kept"]}
            rows.append(row)
            print(f"{name:26s} {scenario:20s} truth {row['truth']:20s} suggested {row['suggested']:20s} "
                  f"centre max {max(score['centre_mm'].values()):4.1f} mm  change err median "
                  f"{statistics.median(score['change_error_mm'].values()):4.2f} mm  missed {score['missed']}  "
                  f"vanished {row['vanished']}  {seconds:5.1f} s", flush=True)
    return {"rows": rows, "skipped_not_decisive": skipped, "summary": summarise(rows)}


def summarise(rows: list[dict]) -> dict:
    centres = [v for r in rows for v in r["centre_mm"].values()]
    changes = [v for r in rows for v in r["change_error_mm"].values()]
    vanished = [tuple(v) for r in rows for v in r["vanished"].values()]
    return {
        "pairs": len(rows),
        "surviving_nodes": len(centres) + sum(len(r["missed"]) for r in rows),
        "surviving_nodes_found": len(centres),
        "centre_error_mm": {"median": _q(centres, 50), "p95": _q(centres, 95), "max": max(centres, default=None),
                            "within_3mm": sum(c <= 3.0 for c in centres)},
        "short_axis_change_error_mm": {"median": _q(changes, 50), "p90": _q(changes, 90), "max": max(changes, default=None)},
        "category_right": sum(r["truth"] == r["suggested"] for r in rows),
        "vanished_nodes": len(vanished),
        "vanished_not_found_without_mask": sum(v == ("not_found", True) for v in vanished),
        "seconds_per_follow_up": {"median": _q([r["seconds"] for r in rows], 50),
                                  "max": max((r["seconds"] for r in rows), default=None)},
        "registration_s": {"median": _q([r["registration_s"] for r in rows], 50)},
    }


def _q(values, percent):
    return round(float(np.percentile(values, percent)), 3) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4, help="pairs per background (default 4)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    engine = NodeEngine(device=args.device, uncertainty=False)
    with tempfile.TemporaryDirectory() as work:
        figures = run(args.pairs, engine, Path(work))
    print(json.dumps(figures["summary"], indent=2))
    print(f"draws replaced (truth on a threshold, or no room for the nodes): {figures['skipped_not_decisive']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
