"""`lymphnode-mtl demo`: a synthetic phantom CT with seeds, run through predict, with its truth."""

from __future__ import annotations

import csv
from pathlib import Path

from ..core import node_status
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
    print_summary(results, out_dir)
    print_status_notice(results)
    truth_by_id = {n.node_id: n for n in phantom.nodes}
    print("\nphantom truth (true probability P and drawn label) next to the prediction:")
    for r in results:
        n = truth_by_id[r.node_id]
        predicted = f"{r.probability:.2f}" if node_status.has_usable_mask(r.status) else f"— ({r.status})"
        print(f"  {r.node_id}: predicted {predicted}, true P {n.probability:.2f}, label {n.label}")
    print(f"\ninputs: {final['volume']}, {final['seeds']}, {final['truth']}")
    print(f"open {final['volume']} and {out_dir / 'nodes.seg.nrrd'} in 3D Slicer to review the masks")
