"""`lymphnode-mtl predict`: CT + seeds -> nodes.seg.nrrd, nodes.csv, run.json, optionally nodes.dcm
(DICOM SEG) and report.png/report.html (all or nothing)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from ..core.case import Case
from ..core.errors import InputError
from ..inference.engine import NodeEngine
from ..io.seed_reader import read_seeds
from ..io.volume_reader import read_volume
from ..outputs.results_table import write_results_csv
from ..outputs.run_record import run_record
from ..outputs.segmentation_writer import write_segmentation
from ..outputs.status_notice import print_status_notice

OUTPUT_FILES = ("nodes.seg.nrrd", "nodes.csv", "run.json")
DICOM_SEG_FILE = "nodes.dcm"
REPORT_FILES = ("report.png", "report.html")


def output_files(dicom_seg: bool = False, report: bool = False) -> tuple[str, ...]:
    """The files one run writes: the three always, the DICOM SEG and the report on request."""
    return OUTPUT_FILES + ((DICOM_SEG_FILE,) if dicom_seg else ()) + (REPORT_FILES if report else ())


def check_output_folder(out_dir: Path, overwrite: bool, names=OUTPUT_FILES) -> None:
    existing = [name for name in names if (out_dir / name).exists()]
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


def load_dicom_sources(volume, case: Case):
    """The CT's DICOM headers in k order when it came from a DICOM folder, else None."""
    if not Path(volume).is_dir():
        return None
    from ..outputs.dicom_seg_writer import read_source_datasets

    return read_source_datasets(volume, case.geometry, case.metadata.get("SeriesInstanceUID"))


def write_outputs(out_dir: Path, case: Case, results, engine, inputs: dict, dicom_seg: bool = False,
                  report: bool = False, dicom_sources=None) -> dict:
    """Write the files into a temporary folder first, then move them in together.

    dicom_seg: also write nodes.dcm, against `dicom_sources` (`load_dicom_sources`; None: a
    synthetic source series). report: also write report.png and report.html.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".lymphnode-mtl-", dir=out_dir))
    try:
        t0 = time.perf_counter()
        write_segmentation(tmp / "nodes.seg.nrrd", results, case.geometry, model_id=engine.model_id,
                           metadata=case.metadata)
        write_results_csv(tmp / "nodes.csv", results)
        if dicom_seg:
            from ..outputs.dicom_seg_writer import write_dicom_seg

            write_dicom_seg(tmp / DICOM_SEG_FILE, results, case.image, case.geometry, dicom_sources,
                            engine.model_id, engine.model.weights_sha256, case.metadata,
                            clinical_use=engine.config.clinical_use)
        if report:
            from ..outputs.case_report import write_case_report

            write_case_report(tmp, case, results, engine.model_id, engine.config.clinical_use)
        engine.timings["write_outputs"] = time.perf_counter() - t0
        engine.timings["read_inputs"] = case.metadata.get("read_s", 0.0)
        meta = {k: v for k, v in case.metadata.items() if k != "read_s"}
        record = run_record(engine, inputs, len(results), meta)
        (tmp / "run.json").write_text(json.dumps(record, indent=2) + "\n")
        written = output_files(dicom_seg, report)
        for name in written:
            os.replace(tmp / name, out_dir / name)
        for name in set(output_files(True, True)) - set(written):
            # an earlier run's DICOM SEG or report would no longer match the new results
            (out_dir / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def predict_to_folder(volume, seeds, out_dir, model=None, device="auto", batch_size=None,
                      overwrite=False, series_uid=None, engine: NodeEngine | None = None,
                      dicom_seg: bool = False, report: bool = False, uncertainty: bool = True):
    out_dir = Path(out_dir)
    check_output_folder(out_dir, overwrite, output_files(dicom_seg, report))
    case = load_case(volume, seeds, series_uid)
    dicom_sources = load_dicom_sources(volume, case) if dicom_seg else None  # fail before the network
    engine = engine or NodeEngine(model, device, batch_size, uncertainty=uncertainty)
    with tqdm(total=len(case.seeds), desc="nodes", unit="node", disable=None) as bar:
        def progress(_stage, done, _total):
            bar.update(done - bar.n)

        results = engine.predict(case, progress)
    inputs = {"volume": str(volume), "seeds": str(seeds)}
    write_outputs(out_dir, case, results, engine, inputs, dicom_seg, report, dicom_sources)
    return results


def print_summary(results, out_dir: Path, names=OUTPUT_FILES) -> None:
    print(f"{'node':>8} {'probability':>11} {'short mm':>9} {'long mm':>8} {'volume mm3':>11}")
    for r in sorted(results, key=lambda r: -r.probability):
        print(f"{r.node_id:>8} {r.probability:>11.3f} {r.short_axis_mm:>9.1f} {r.long_axis_mm:>8.1f} "
              f"{r.volume_mm3:>11.0f}")
    for name in names:
        print(f"wrote {out_dir / name}")


def run_predict(args) -> None:
    dicom_seg, report = getattr(args, "dicom_seg", False), getattr(args, "report", False)
    results = predict_to_folder(args.volume, args.seeds, args.out, args.model, args.device,
                                args.batch_size, args.overwrite, args.series_uid,
                                dicom_seg=dicom_seg, report=report,
                                uncertainty=not getattr(args, "no_uncertainty", False))
    print_summary(results, Path(args.out), output_files(dicom_seg, report))
    print_status_notice(results)
