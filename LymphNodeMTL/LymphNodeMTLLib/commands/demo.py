"""`lymphnode-mtl demo`: a synthetic phantom CT with seeds, run through predict, with its truth."""

from __future__ import annotations

import csv
from pathlib import Path

from ..core import node_status
from ..outputs.console_summary import LABEL_WORDS
from ..outputs.output_folder import cleanup_on_signals
from ..outputs.status_notice import print_status_notice
from .predict import OUTPUT_FILES, load_case, output_folder, print_summary, run_engine, write_results

INPUT_FOLDER = "input"


def write_demo_inputs(out_dir: Path, seed: int, n_nodes: int):
    """Phantom CT + Slicer markups seeds + truth table under out_dir/input. Returns the paths."""
    import numpy as np

    from ..io.seed_reader import write_markups_json
    from ..io.volume_reader import write_volume
    from ..phantoms.case_generator import generate_phantom_case

    case = generate_phantom_case(np.random.default_rng(seed), n_nodes, spacing=(0.8, 0.8, 2.0),
                                 direction=np.eye(3))
    inputs = out_dir / INPUT_FOLDER
    inputs.mkdir(parents=True, exist_ok=True)
    ct, seeds, truth = inputs / "ct.nrrd", inputs / "seeds.mrk.json", inputs / "truth.csv"
    write_volume(ct, case.image, case.geometry)
    write_markups_json(seeds, case.to_case().seeds)
    with open(truth, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "true_probability", "label", "short_axis_mm"])
        for n in case.nodes:
            w.writerow([n.node_id, f"{n.probability:.4f}", n.label, f"{n.features.short_axis_mm:.2f}"])
    return ct, seeds, truth, case


def truth_lines(results, phantom_nodes) -> list[str]:
    """The phantom's truth beside each prediction, in words: the true probability P the phantom
    drew its outcome from, and that outcome (a node of P 0.73 is benign in 27 of 100 draws, so a
    benign outcome beside P 0.73 is no contradiction)."""
    truth_by_id = {n.node_id: n for n in phantom_nodes}
    lines = ["phantom truth beside the prediction; each node's outcome was drawn at random with its true",
             "probability P, so an outcome may differ from what P (or a good prediction) suggests:",
             f"  {'node':>6} {'predicted P':>11} {'predicted':>11} {'true P':>7} {'drawn outcome':>14}"]
    for r in results:
        n = truth_by_id[r.node_id]
        if node_status.has_usable_mask(r.status):
            predicted, label = f"{r.probability:.2f}", LABEL_WORDS.get(int(r.predicted_label), "—")
        else:
            predicted, label = "—", f"({r.status})"
        lines.append(f"  {r.node_id:>6} {predicted:>11} {label:>11} {n.probability:>7.2f} "
                     f"{LABEL_WORDS[int(n.label)]:>14}")
    return lines


def add_arguments(d) -> None:
    from .cli import add_engine_arguments, positive_int

    d.add_argument("--out", default="demo-output", metavar="DIR", help="output folder (default demo-output)")
    d.add_argument("--seed", type=int, default=2026, help="random seed of the phantom (default 2026)")
    d.add_argument("--nodes", type=positive_int, default=8,
                   help="number of nodes in the phantom, at least 1 (default 8)")
    add_engine_arguments(d)


def run(args) -> None:
    """The phantom inputs and the results appear together in --out (one locked, all-or-nothing
    write, as predict's)."""
    from ..inference.engine import NodeEngine

    out_dir = Path(args.out)
    folder = output_folder(out_dir, args.overwrite, OUTPUT_FILES + (INPUT_FOLDER,))
    folder.check()
    engine = NodeEngine(args.model, args.device, args.batch_size, uncertainty=not args.no_uncertainty)
    with cleanup_on_signals(), folder:
        ct, seeds, truth, phantom = write_demo_inputs(folder.staging, args.seed, args.nodes)
        case, _, _ = load_case(ct, seeds)
        results = run_engine(engine, case)
        final = {name: out_dir / INPUT_FOLDER / path.name for name, path in
                 (("volume", ct), ("seeds", seeds), ("truth", truth))}
        write_results(folder.staging, case, results, engine,
                      {"volume": str(final["volume"]), "seeds": str(final["seeds"])})
        folder.publish()
    print_summary(results, out_dir, OUTPUT_FILES)
    print_status_notice(results)
    print()
    for line in truth_lines(results, phantom.nodes):
        print(line)
    print(f"\ninputs: {final['volume']}, {final['seeds']}, {final['truth']}")
    print(f"open {final['volume']} and {out_dir / 'nodes.seg.nrrd'} in 3D Slicer to review the masks")
