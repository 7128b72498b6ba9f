"""`lymphnode-mtl demo`: a synthetic phantom CT with seeds, run through predict, with its truth."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..io.seed_reader import write_markups_json
from ..io.volume_reader import write_volume
from ..phantoms.case_generator import generate_phantom_case
from .predict import check_output_folder, predict_to_folder, print_summary


def write_demo_inputs(out_dir: Path, seed: int, n_nodes: int):
    """Phantom CT + Slicer markups seeds + truth table under out_dir/input. Returns the paths."""
    case = generate_phantom_case(np.random.default_rng(seed), n_nodes, spacing=(0.8, 0.8, 2.0),
                                 direction=np.eye(3))
    inputs = out_dir / "input"
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


def run_demo(args) -> None:
    out_dir = Path(args.out)
    check_output_folder(out_dir, args.overwrite)
    ct, seeds, truth, case = write_demo_inputs(out_dir, args.seed, args.nodes)
    results = predict_to_folder(ct, seeds, out_dir, args.model, args.device, args.batch_size, overwrite=True)
    print_summary(results, out_dir)
    truth_by_id = {n.node_id: n for n in case.nodes}
    print("\nphantom truth (true probability P and drawn label) next to the prediction:")
    for r in results:
        n = truth_by_id[r.node_id]
        print(f"  {r.node_id}: predicted {r.probability:.2f}, true P {n.probability:.2f}, label {n.label}")
    print(f"\ninputs: {ct}, {seeds}, {truth}")
    print(f"open {ct} and {out_dir / 'nodes.seg.nrrd'} in 3D Slicer to review the masks")
