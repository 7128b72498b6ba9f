"""`lymphnode-mtl predict`: CT + seeds -> nodes.seg.nrrd, nodes.csv, run.json (all or nothing)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from .case import Case
from .engine import NodeEngine
from .errors import InputError
from .results_table import write_results_csv
from .run_record import run_record
from .seed_reader import read_seeds
from .segmentation_writer import write_segmentation
from .volume_reader import read_volume

OUTPUT_FILES = ("nodes.seg.nrrd", "nodes.csv", "run.json")


def check_output_folder(out_dir: Path, overwrite: bool) -> None:
    existing = [name for name in OUTPUT_FILES if (out_dir / name).exists()]
    if existing and not overwrite:
        raise InputError(
            f"{out_dir} already holds {', '.join(existing)} (possibly edited masks); "
            "choose another --out or pass --overwrite"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file, not a folder; choose a folder path")


def load_case(volume_path, seeds_path, series_uid=None) -> Case:
    t0 = time.perf_counter()
    image, geometry, metadata = read_volume(volume_path, series_uid=series_uid)
    seeds = read_seeds(seeds_path)
    case = Case(image, geometry, seeds, metadata)
    case.validate_seeds()
    case.metadata["read_s"] = time.perf_counter() - t0
    return case


def write_outputs(out_dir: Path, case: Case, results, engine, inputs: dict) -> dict:
    """Write the three files into a temporary folder first, then move them in together."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".lymphnode-mtl-", dir=out_dir))
    try:
        t0 = time.perf_counter()
        write_segmentation(tmp / "nodes.seg.nrrd", results, case.geometry, model_id=engine.model_id,
                           metadata=case.metadata)
        write_results_csv(tmp / "nodes.csv", results)
        engine.timings["write_outputs"] = time.perf_counter() - t0
        engine.timings["read_inputs"] = case.metadata.get("read_s", 0.0)
        meta = {k: v for k, v in case.metadata.items() if k != "read_s"}
        record = run_record(engine, inputs, len(results), meta)
        (tmp / "run.json").write_text(json.dumps(record, indent=2) + "\n")
        for name in OUTPUT_FILES:
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def predict_to_folder(volume, seeds, out_dir, model=None, device="auto", batch_size=None,
                      overwrite=False, series_uid=None, engine: NodeEngine | None = None):
    out_dir = Path(out_dir)
    check_output_folder(out_dir, overwrite)
    case = load_case(volume, seeds, series_uid)
    engine = engine or NodeEngine(model, device, batch_size)
    with tqdm(total=len(case.seeds), desc="nodes", unit="node", disable=None) as bar:
        def progress(_stage, done, _total):
            bar.update(done - bar.n)

        results = engine.predict(case, progress)
    inputs = {"volume": str(volume), "seeds": str(seeds)}
    write_outputs(out_dir, case, results, engine, inputs)
    return results


def print_summary(results, out_dir: Path) -> None:
    print(f"{'node':>8} {'probability':>11} {'short mm':>9} {'long mm':>8} {'volume mm3':>11}")
    for r in sorted(results, key=lambda r: -r.probability):
        print(f"{r.node_id:>8} {r.probability:>11.3f} {r.short_axis_mm:>9.1f} {r.long_axis_mm:>8.1f} "
              f"{r.volume_mm3:>11.0f}")
    for name in OUTPUT_FILES:
        print(f"wrote {out_dir / name}")


def run_predict(args) -> None:
    results = predict_to_folder(args.volume, args.seeds, args.out, args.model, args.device,
                                args.batch_size, args.overwrite, args.series_uid)
    print_summary(results, Path(args.out))
