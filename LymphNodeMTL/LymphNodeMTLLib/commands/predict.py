"""`lymphnode-mtl predict`: CT + seeds (and prompts) -> nodes.seg.nrrd, nodes.csv, run.json, optionally
nodes.dcm (DICOM SEG) and report.png/report.html, written all or nothing.

`predict_to_folder` is the Python entry point; the CLI, the server and the tests call it, and the
CLI does nothing but parse its arguments for it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.case import Case
from ..core.errors import InputError
from ..outputs.console_summary import print_summary
from ..outputs.output_folder import OutputFolder, cleanup_on_signals
from ..outputs.run_record import RECORD_NAME
from ..outputs.status_notice import print_status_notice

if TYPE_CHECKING:  # the engine imports torch: only when a prediction runs
    from ..core.node_result import NodeResult
    from ..inference.engine import NodeEngine

EPILOG = """\
inputs:
  CT      a file (.nrrd .nhdr .nii .nii.gz .mha .mhd) or a folder holding one DICOM series
  seeds   a 3D Slicer markups file (.mrk.json; each point's label is the node id) or a CSV with
          header id,r,a,s (RAS mm, Slicer's convention) or id,l,p,s (LPS mm, DICOM's convention)
  prompts a JSON file of per-node prompts besides the seeds (each key optional, clicks in order):
          {"coordinate_system": "RAS", "nodes": {"N01": {"seed": [r,a,s],
           "line": [[r,a,s],[r,a,s]], "box": [[low r,a,s],[high r,a,s]],
           "clicks": [{"point": [r,a,s], "positive": false}]}}}
          node ids as in the seeds file; a node without a seed there needs a line or a box

checks before any work (each refusal is one line, exit code 2, nothing written):
  the CT file is complete (no truncated copy), and looks like a CT in HU: DICOM Modality CT, voxel
  spacing in mm, orthogonal axes, values below 0, fat and soft tissue present; NaN/inf voxels
  outside the body are read as air (with a warning), inside it refused; one seed per node, each
  inside the CT; prompts inside the CT, no zero-length line, no inverted box or one thinner than a
  voxel, no negative click on the node's seed, and a model that reads prompts

outputs in DIR (written together at the end, or not at all; DIR is locked while a run writes):
  nodes.seg.nrrd  one segment per seed, "LN <id>", opens in 3D Slicer as a segmentation
  nodes.csv       one row per node: probability, label, volume, short/long axis, mean/SD HU
  run.json        model id, weights hash, software versions, device, timings and the files written
  nodes.dcm       with --dicom-seg: DICOM SEG, one segment per node, referencing the CT series
  report.png      with --report: per-node axial/coronal/sagittal thumbnails, probability, axes
  report.html     with --report: the same as one self-contained web page

example:
  lymphnode-mtl predict --volume ct.nrrd --seeds seeds.mrk.json --out results/
"""

OUTPUT_FILES = ("nodes.seg.nrrd", "nodes.csv", RECORD_NAME)
DICOM_SEG_FILE = "nodes.dcm"
REPORT_FILES = ("report.png", "report.html")


def output_files(dicom_seg: bool = False, report: bool = False) -> tuple[str, ...]:
    """The files one run writes: the three always, the DICOM SEG and the report on request."""
    return OUTPUT_FILES + ((DICOM_SEG_FILE,) if dicom_seg else ()) + (REPORT_FILES if report else ())


def output_folder(out_dir, overwrite: bool, names=OUTPUT_FILES, warn=None) -> OutputFolder:
    """The locked, all-or-nothing output folder for `names`; the other result files an earlier run
    may have left there are refused without overwrite and never removed."""
    related = [n for n in output_files(True, True) if n not in names]
    return OutputFolder(out_dir, names, overwrite, related=related, warn=warn)


def load_case(volume_path, seeds_path, series_uid=None, warn=None, prompts_path=None):
    """Read the CT, the seeds and the prompts and refuse what the engine cannot answer truthfully
    (Case.validate: CT plausibility, seed placement; the prompts against the CT), the one check of
    this process: the engine trusts the case.

    Returns the case, for a DICOM series its slices' headers in k order (else None), and the
    prompts per node id ({} without a prompts file). A node of the prompts without a seed in the
    seeds file gets its prompts' seed or anchor as its seed.
    """
    from ..core.node_prompts import merge_seeds_and_prompts
    from ..io.prompt_reader import read_prompts
    from ..io.seed_reader import read_seeds
    from ..io.volume_reader import read_ct

    if seeds_path is None and prompts_path is None:
        raise InputError("give the nodes as --seeds, --prompts or both")
    t0 = time.perf_counter()
    prompts = read_prompts(prompts_path) if prompts_path is not None else {}
    seeds = read_seeds(seeds_path) if seeds_path is not None else []
    seeds, prompts = merge_seeds_and_prompts(seeds, prompts)
    ct = read_ct(volume_path, series_uid=series_uid)
    case = Case(ct.image, ct.geometry, seeds, ct.metadata)
    case.validate(Path(volume_path).name, warn)
    case.metadata["read_s"] = time.perf_counter() - t0
    return case, ct.dicom_headers, prompts


def dicom_seg_sources(volume, case: Case, dicom_headers: list | None):
    """The DICOM SEG's source images: the CT's DICOM headers matched to its k planes; None for a
    CT from an image file (the writer then makes a synthetic series)."""
    if dicom_headers is None:
        return None
    from ..io.dicom_sources import source_datasets

    return source_datasets(dicom_headers, case.geometry, Path(volume).name)


def run_engine(engine: "NodeEngine", case: Case, prompts=None, progress_bar: bool = True) -> list["NodeResult"]:
    """The engine's results for every seed (following each node's prompts), with a progress bar on
    a terminal (unless progress_bar is False)."""
    from tqdm import tqdm

    with tqdm(total=len(case.seeds), desc="nodes", unit="node", disable=None if progress_bar else True) as bar:
        def progress(_stage, done, _total):
            bar.update(done - bar.n)

        return engine.predict(case, progress, prompts)


def write_results(folder: Path, case: Case, results, engine, inputs: dict, dicom_seg: bool = False,
                  report: bool = False, dicom_sources=None) -> dict:
    """Write the result files into `folder` (a staging folder; `OutputFolder.publish` moves them
    into place). Returns the run record.

    dicom_seg: also write nodes.dcm, against `dicom_sources` (`dicom_seg_sources`; None: a
    synthetic source series). report: also write report.png and report.html.
    """
    from ..outputs.results_table import write_results_csv
    from ..outputs.run_record import write_run_record
    from ..outputs.segmentation_writer import write_segmentation

    folder = Path(folder)
    t0 = time.perf_counter()
    write_segmentation(folder / "nodes.seg.nrrd", results, case.geometry, metadata=case.metadata)
    write_results_csv(folder / "nodes.csv", results)
    if dicom_seg:
        from ..outputs.dicom_seg_writer import write_dicom_seg

        write_dicom_seg(folder / DICOM_SEG_FILE, results, case.image, case.geometry, dicom_sources,
                        engine.model_id, engine.model.weights_sha256, case.metadata,
                        clinical_use=engine.config.clinical_use)
    if report:
        from ..outputs.case_report import write_case_report

        write_case_report(folder, case, results, engine.model_id, engine.config.clinical_use)
    engine.timings["write_outputs"] = time.perf_counter() - t0
    engine.timings["read_inputs"] = case.metadata.get("read_s", 0.0)
    extra = {"dicom_seg_references": dicom_seg_reference(dicom_sources, "--volume")} if dicom_seg else {}
    return write_run_record(folder, engine, inputs, len(results), case_record(case, dicom_sources is not None),
                            output_files(dicom_seg, report), extra)


def synthetic_source_note(option: str) -> str:
    """Said on stderr and in run.json when a SEG is written for a CT that was not read from DICOM;
    option: the command's option that names that CT."""
    return ("the CT was not read from DICOM, so nodes.dcm references a synthetic CT series made for it "
            "(new study UID, PatientID ANONYMOUS): a PACS will not link it to the patient's study; "
            f"give the DICOM series folder as {option} for a SEG that references it")


def dicom_seg_reference(dicom_sources, option: str) -> str:
    """What the DICOM SEG references, for run.json."""
    if dicom_sources is None:
        return f"synthetic CT series: {synthetic_source_note(option)}"
    return f"the source DICOM series {dicom_sources[0].get('SeriesInstanceUID', '')}".strip()


def case_record(case: Case, from_dicom: bool = False) -> dict:
    """run.json's `case`: the CT's grid (and its DICOM identifiers when it came from DICOM)."""
    geometry = case.geometry
    record = {"source": "DICOM series" if from_dicom or "SeriesInstanceUID" in case.metadata else "image file",
              "size_ijk": [int(v) for v in geometry.shape_kji[::-1]],
              "spacing_mm": [round(float(v), 4) for v in geometry.spacing],
              "seeds": len(case.seeds)}
    record.update({k: v for k, v in case.metadata.items() if k != "read_s"})
    return record


def predict_to_folder(
    volume: str | os.PathLike,
    seeds: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    model: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    overwrite: bool = False,
    series_uid: str | None = None,
    engine: "NodeEngine | None" = None,
    dicom_seg: bool = False,
    report: bool = False,
    *,
    uncertainty: bool = True,
    warn: Callable[[str], None] | None = None,
    prompts: str | os.PathLike | None = None,
    node_progress_bar: bool = True,
) -> list["NodeResult"]:
    """Segment and classify the lymph nodes of one CT and write the results into a folder.

    This is what `lymphnode-mtl predict` runs. Inputs are checked before any work: the CT must be
    complete (io/file_integrity.py) and plausible as CT in HU (core/ct_plausibility.py), the seeds
    must each lie in the CT, one per node, and the folder must be writable.

    Args:
        volume: the CT: .nrrd, .nhdr, .nii, .nii.gz, .mha or .mhd file, or a folder holding one
            DICOM series.
        seeds: a 3D Slicer markups file (.mrk.json) or a CSV (id,r,a,s in RAS mm or id,l,p,s in
            LPS mm); one seed per node, its label the node id. None: the nodes of `prompts`.
        out_dir: the output folder, created when missing. It receives nodes.seg.nrrd, nodes.csv
            and run.json, plus nodes.dcm (dicom_seg) and report.png/report.html (report).
        model: a model folder; None: the bundled demonstration model.
        device: "auto" (a GPU when there is one), "cpu", "cuda" or "cuda:N".
        batch_size: nodes per network pass; None: 64 on a GPU, 8 on a CPU.
        overwrite: replace the results of an earlier run in `out_dir`; without it a folder that
            already holds any result file is refused. Other files are never touched.
        series_uid: the SeriesInstanceUID to read when the DICOM folder holds several series.
        engine: a NodeEngine to reuse (then model, device and batch_size are ignored).
        dicom_seg: also write nodes.dcm, a DICOM SEG referencing the CT series.
        report: also write report.png and report.html for review.
        uncertainty: say how stable each mask is under a threshold change (mask agreement,
            status low_agreement), from the pass each node already had: milliseconds.
        warn: receives warning lines (e.g. non-finite voxels outside the body read as air);
            default: printed on stderr.
        prompts: a prompts file (io/prompt_reader.py): per node id a seed, a long-axis line, a box
            and clicks in order, in RAS or LPS as the file says. A node with a line, a box or
            clicks is segmented from them (each click refining the mask the prompts before it
            gave) and re-classified from its final mask; a node of the prompts without a seed in
            `seeds` takes its prompts' seed, else the middle of its line or box.
        node_progress_bar: a progress bar over the nodes on a terminal (a cohort shows its own).

    Returns:
        One NodeResult per seed, in seed order.

    Raises:
        InputError: bad input or an unusable output folder, as one line saying what to do (the
            CLI prints it and exits with code 2). Nothing is written then; files already in
            `out_dir` are left as they were.

    The output folder is locked for the run (a second run into it is refused); all files are
    written into a hidden staging folder and moved in together at the end, and an error, Ctrl-C,
    SIGTERM or SIGHUP leaves no file of this run behind.
    """
    folder = output_folder(out_dir, overwrite, output_files(dicom_seg, report), warn)
    folder.check()  # before reading anything: a refused folder costs nothing
    case, dicom_headers, node_prompts = load_case(volume, seeds, series_uid, warn, prompts)
    # before the network: a source series that does not match the CT is refused now
    dicom_sources = dicom_seg_sources(volume, case, dicom_headers) if dicom_seg else None
    if dicom_seg and dicom_sources is None:
        folder.warn(synthetic_source_note("--volume"))
    if engine is None:
        from ..inference.engine import NodeEngine

        engine = NodeEngine(model, device, batch_size, uncertainty=uncertainty)
    engine.check_prompts(case, node_prompts)  # against this CT and this model, before any work
    with cleanup_on_signals(), folder:
        results = run_engine(engine, case, node_prompts, node_progress_bar)
        inputs = {"volume": str(volume), "seeds": None if seeds is None else str(seeds),
                  "prompts": None if prompts is None else str(prompts)}
        write_results(folder.staging, case, results, engine, inputs, dicom_seg, report, dicom_sources)
        folder.publish()
    return results


def add_arguments(p, inputs=None) -> None:
    """predict's options for one CT; inputs: the group --volume joins (predict_command.py puts
    --manifest beside it), None: --volume required."""
    from .cli import add_engine_arguments

    (inputs or p).add_argument("--volume", required=inputs is None, metavar="CT",
                               help="CT file or DICOM series folder")
    p.add_argument("--series-uid", metavar="UID", help="which series, when the DICOM folder holds several")
    p.add_argument("--seeds", metavar="SEEDS", help=".mrk.json or .csv seed file")
    p.add_argument("--prompts", metavar="FILE",
                   help="JSON prompts per node: long-axis line, box, positive/negative clicks (see below)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the results (created)")
    p.add_argument("--dicom-seg", action="store_true",
                   help="also write DIR/nodes.dcm, a DICOM SEG (for PACS and DICOM viewers)")
    p.add_argument("--report", action="store_true",
                   help="also write DIR/report.png and DIR/report.html for review")
    add_engine_arguments(p)


def run(args) -> None:
    results = predict_to_folder(args.volume, args.seeds, args.out, args.model, args.device,
                                args.batch_size, args.overwrite, args.series_uid,
                                dicom_seg=args.dicom_seg, report=args.report,
                                uncertainty=not args.no_uncertainty, prompts=args.prompts)
    print_summary(results, Path(args.out), output_files(args.dicom_seg, args.report))
    print_status_notice(results)

