"""`lymphnode-mtl follow-up`: a baseline CT with its results and a follow-up CT -> every baseline
node found again (or `not_found`), measured at both times, and the suggested RECIST 1.1 nodal
response; written all or nothing, under predict's rules for the output folder.

`follow_up_to_folder` is the Python entry point; the CLI only parses its arguments for it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.case import Case
from ..core.errors import InputError
from ..outputs.output_folder import OutputFolder, cleanup_on_signals
from ..outputs.run_record import RECORD_NAME
from .predict import (DICOM_SEG_FILE, REPORT_FILES, case_record, dicom_seg_reference, dicom_seg_sources,
                      synthetic_source_note)

if TYPE_CHECKING:
    from ..inference.engine import NodeEngine
    from ..inference.follow_up_study import FollowUpStudy

EPILOG = """\
inputs:
  CT0, CT1  the baseline and the follow-up CT: a file (.nrrd .nhdr .nii .nii.gz .mha .mhd) or a
            folder holding one DICOM series
  DIR0      the folder predict wrote for CT0 (its nodes.seg.nrrd, also as corrected and saved in
            3D Slicer): every node in it is carried into CT1
  SEEDS     optional: nodes new at follow-up, as for predict (ids other than the baseline's)

what it does:
  registers CT1 to CT0 (rigid, affine, coarse B-spline where it helps; each stage's metric in
  run.json), registers each node's surroundings again, maps the node's innermost point into CT1
  as its seed, segments it there, and checks the mask against CT0: a mask on tissue that was
  something else at baseline, or away from the node, is dropped and the node is not_found

outputs in DIR1 (written together at the end, or not at all):
  nodes.seg.nrrd  the follow-up segmentation, segment names and ids as in DIR0, new nodes after
  nodes.csv       one row per node: status (ok, not_found, registration_uncertain, new, ...),
                  target, short/long axis and volume at both times, change in mm and %, both
                  probabilities
  response.json   target nodes, their sums, the suggested RECIST 1.1 nodal response and why
  run.json        model, software, timings, the registration's stages and the files written
  nodes.dcm       with --dicom-seg: DICOM SEG referencing the follow-up series
  report.png/html with --report: baseline and follow-up thumbnails side by side per node

The response category is a suggestion for the radiologist to confirm.

example:
  lymphnode-mtl follow-up --baseline ct0.nrrd --baseline-results results0/ --follow-up ct1.nrrd --out results1/
"""

OUTPUT_FILES = ("nodes.seg.nrrd", "nodes.csv", "response.json", RECORD_NAME)


def output_files(dicom_seg: bool = False, report: bool = False) -> tuple[str, ...]:
    return OUTPUT_FILES + ((DICOM_SEG_FILE,) if dicom_seg else ()) + (REPORT_FILES if report else ())


def load_ct(path, series_uid, warn, option: str) -> tuple[Case, list | None]:
    """A CT with no seeds, checked as predict checks one (complete file, plausible CT in HU)."""
    from ..io.volume_reader import read_ct

    t0 = time.perf_counter()
    ct = read_ct(path, series_uid=series_uid)
    case = Case(ct.image, ct.geometry, [], ct.metadata)
    case.validate_image(f"{option} {Path(path).name}", warn)
    case.metadata["read_s"] = time.perf_counter() - t0
    return case, ct.dicom_headers


def follow_up_to_folder(
    baseline: str | os.PathLike,
    baseline_results: str | os.PathLike,
    follow_up: str | os.PathLike,
    out_dir: str | os.PathLike,
    seeds: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    overwrite: bool = False,
    *,
    baseline_series_uid: str | None = None,
    follow_up_series_uid: str | None = None,
    engine: "NodeEngine | None" = None,
    dicom_seg: bool = False,
    report: bool = False,
    uncertainty: bool = True,
    deformable: bool = True,
    warn: Callable[[str], None] | None = None,
) -> "FollowUpStudy":
    """Carry every node of a baseline run into a follow-up CT and write the follow-up's results.

    This is what `lymphnode-mtl follow-up` runs; the checks and the output folder's rules are
    predict's (`predict_to_folder`): bad input is refused before any work with one line
    (InputError), `out_dir` is locked while the run writes, results appear all together or not at
    all, and earlier results there are replaced only with `overwrite`.

    Args:
        baseline: the baseline CT (file or DICOM series folder).
        baseline_results: the folder predict wrote for it (nodes.seg.nrrd, possibly corrected).
        follow_up: the follow-up CT.
        out_dir: the output folder (not the baseline's): nodes.seg.nrrd, nodes.csv, response.json,
            run.json, and nodes.dcm (dicom_seg), report.png/report.html (report).
        seeds: nodes new at follow-up (a seeds file as for predict; ids not used at baseline).
        model, device, batch_size, engine, uncertainty, warn: as for predict_to_folder.
        baseline_series_uid, follow_up_series_uid: which series, for DICOM folders holding several.
        deformable: allow the coarse B-spline stage of the registration.

    Returns:
        The study: per node both time points (FollowUpStudy.changes), the registration, the response.
    """
    from ..outputs.baseline_results import read_baseline_results
    from ..io.seed_reader import read_seeds

    if Path(out_dir).absolute() == Path(baseline_results).absolute():
        raise InputError(f"--out {out_dir} is the baseline results folder; write the follow-up into another folder")
    names = output_files(dicom_seg, report)
    related = [n for n in output_files(True, True) if n not in names]
    folder = OutputFolder(out_dir, names, overwrite, related=related, warn=warn)
    folder.check()
    baseline_case, _ = load_ct(baseline, baseline_series_uid, warn, "--baseline")
    follow_case, follow_headers = load_ct(follow_up, follow_up_series_uid, warn, "--follow-up")
    baseline_nodes = read_baseline_results(baseline_results, baseline_case.image, baseline_case.geometry)
    new_seeds = read_seeds(seeds) if seeds is not None else []
    from ..inference.follow_up_study import check_new_seeds

    check_new_seeds(baseline_nodes, new_seeds)
    follow_case = Case(follow_case.image, follow_case.geometry, new_seeds, follow_case.metadata)
    if new_seeds:
        follow_case.validate_seeds()
    # before the network: a source series that does not match the CT is refused now
    dicom_sources = dicom_seg_sources(follow_up, follow_case, follow_headers) if dicom_seg else None
    if dicom_seg and dicom_sources is None:
        folder.warn(synthetic_source_note("--follow-up"))
    if engine is None:
        from ..inference.engine import NodeEngine

        engine = NodeEngine(model, device, batch_size, uncertainty=uncertainty)
    from ..inference.follow_up_study import run_follow_up

    with cleanup_on_signals(), folder:
        study = run_follow_up(engine, baseline_case, baseline_nodes, follow_case, new_seeds, deformable)
        inputs = {"baseline": str(baseline), "baseline_results": str(baseline_results), "follow_up": str(follow_up),
                  "seeds": None if seeds is None else str(seeds)}
        _write(folder.staging, baseline_case, follow_case, study, engine, inputs, dicom_seg, report, dicom_sources)
        folder.publish()
    return study


def _write(folder: Path, baseline: Case, follow_up: Case, study, engine, inputs, dicom_seg, report, dicom_sources):
    from ..outputs.follow_up_table import write_follow_up_csv, write_response_json
    from ..outputs.run_record import write_run_record
    from ..outputs.segmentation_writer import write_segmentation

    t0 = time.perf_counter()
    results = study.follow_up_results()
    metadata = {k: v for k, v in follow_up.metadata.items() if k != "read_s"}
    write_segmentation(folder / "nodes.seg.nrrd", results, follow_up.geometry, metadata=metadata)
    write_follow_up_csv(folder / "nodes.csv", study.changes)
    write_response_json(folder / "response.json", study)
    if dicom_seg:
        from ..outputs.dicom_seg_writer import write_dicom_seg

        write_dicom_seg(folder / DICOM_SEG_FILE, results, follow_up.image, follow_up.geometry, dicom_sources,
                        engine.model_id, engine.model.weights_sha256, metadata,
                        clinical_use=engine.config.clinical_use)
    if report:
        from ..outputs.follow_up_report import write_follow_up_report

        write_follow_up_report(folder, baseline, follow_up, study, engine.model_id, engine.config.clinical_use)
    for stage, seconds in study.timings.items():
        engine.timings[stage] = seconds
    engine.timings["write_outputs"] = time.perf_counter() - t0
    engine.timings["read_inputs"] = baseline.metadata.get("read_s", 0.0) + follow_up.metadata.get("read_s", 0.0)
    carried = {c.node_id: {"local_shift_mm": _finite(c.carried.local_shift_mm),
                           "local_correlation": _finite(c.carried.local_correlation), **c.carried.checks}
               for c in study.changes if c.carried is not None}
    extra = {"registration": study.registration.record(), "carried_nodes": carried,
             "response": study.response.as_dict()}
    if dicom_seg:
        extra["dicom_seg_references"] = dicom_seg_reference(dicom_sources, "--follow-up")
    write_run_record(folder, engine, inputs, len(results), case_record(follow_up, dicom_sources is not None),
                     output_files(dicom_seg, report), extra)


def _finite(value: float):
    return round(float(value), 4) if value == value else None


def print_summary(study, out_dir: Path, names) -> None:
    from ..outputs.follow_up_report import response_line
    from ..outputs.follow_up_table import change_row

    print(f"{'node':>8} {'status':>22} {'short mm before':>15} {'after':>7} {'change':>8}")
    for change in study.changes:
        row = change_row(change)
        cells = [row["baseline_short_axis_mm"], row["follow_up_short_axis_mm"], row["short_axis_change_mm"]]
        before, after, delta = ("—" if v is None or v != v else f"{v:.1f}" for v in cells)
        print(f"{change.node_id:>8} {change.status:>22} {before:>15} {after:>7} {delta:>8}")
    print(response_line(study.response))
    for name in names:
        print(f"wrote {out_dir / name}")


def add_arguments(p, inputs=None) -> None:
    """follow-up's options for one pair of CTs; inputs: the group --baseline joins
    (follow_up_command.py puts --manifest beside it; run() then asks for the other two inputs),
    None: all three inputs required."""
    from .cli import add_engine_arguments

    single = inputs is None
    (inputs or p).add_argument("--baseline", required=single, metavar="CT0",
                               help="baseline CT file or DICOM series folder")
    p.add_argument("--baseline-results", required=single, metavar="DIR0",
                   help="the folder predict wrote for the baseline CT (nodes.seg.nrrd)")
    p.add_argument("--follow-up", required=single, metavar="CT1", help="follow-up CT file or DICOM series folder")
    p.add_argument("--out", required=True, metavar="DIR1",
                   help="folder for the follow-up results (created); with --manifest, the cohort's: a folder per case")
    p.add_argument("--seeds", metavar="SEEDS", help="nodes new at follow-up: .mrk.json or .csv seed file")
    p.add_argument("--baseline-series-uid", metavar="UID", help="which baseline series, when the folder holds several")
    p.add_argument("--follow-up-series-uid", metavar="UID", help="which follow-up series, when the folder holds several")
    p.add_argument("--rigid-affine-only", action="store_true", help="no B-spline stage in the registration")
    p.add_argument("--dicom-seg", action="store_true", help="also write DIR1/nodes.dcm, a DICOM SEG")
    p.add_argument("--report", action="store_true", help="also write DIR1/report.png and DIR1/report.html")
    add_engine_arguments(p)


def run(args) -> None:
    # beside --manifest (follow_up_command.py) argparse cannot ask for these two itself
    missing = [flag for flag, value in (("--baseline-results DIR0", args.baseline_results),
                                        ("--follow-up CT1", args.follow_up)) if not value]
    if missing:
        raise InputError(f"--baseline needs {' and '.join(missing)} beside it (or --manifest CSV for a cohort)")
    study = follow_up_to_folder(args.baseline, args.baseline_results, args.follow_up, args.out, args.seeds,
                                args.model, args.device, args.batch_size, args.overwrite,
                                baseline_series_uid=args.baseline_series_uid,
                                follow_up_series_uid=args.follow_up_series_uid,
                                dicom_seg=args.dicom_seg, report=args.report,
                                uncertainty=not args.no_uncertainty, deformable=not args.rigid_affine_only)
    print_summary(study, Path(args.out), output_files(args.dicom_seg, args.report))
