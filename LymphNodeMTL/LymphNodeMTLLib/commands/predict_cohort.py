"""`lymphnode-mtl predict --manifest M.csv --out DIR`: predict on every case of a cohort manifest,
through the cohort runner (cohort_runner.py): resumable, failures recorded, worker processes,
shards. `predict_cohort` is the Python entry point.

Manifest columns (io/cohort_manifest.py): case_id, volume, and seeds, prompts or both; optional
series_uid and out. Each column means what the predict option of the same name means.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from ..core.node_status import has_usable_mask, needs_review
from ..io.cohort_manifest import CohortCase, ManifestColumns
from .cohort_options import cohort_exit_code, refuse_single_case_options
from .cohort_runner import CohortRun, run_cohort
from .engine_job import EngineJob
from .predict import output_files, predict_to_folder


def _seeds_or_prompts(values: dict) -> str | None:
    if not values.get("seeds") and not values.get("prompts"):
        return "give the case's nodes in its seeds column, its prompts column or both"
    return None


PREDICT_COLUMNS = ManifestColumns(required_paths=("volume",), optional_paths=("seeds", "prompts"),
                                  optional_text=("series_uid",), check_row=_seeds_or_prompts)


@dataclass
class PredictJob(EngineJob):
    """predict_to_folder on one case, with one engine per process."""

    name = "predict"
    columns = PREDICT_COLUMNS
    # nodes in the case, nodes predicted metastatic, nodes to look at first (a status but ok), of
    # which without a usable mask (no probability)
    fact_columns = ("nodes", "metastatic", "to_review", "without_mask")

    def output_files(self) -> tuple[str, ...]:
        return output_files(self.dicom_seg, self.report)

    def record_inputs(self, case: CohortCase) -> dict:
        return {name: case.inputs[name] for name in ("volume", "seeds", "prompts")}

    def run_case(self, case: CohortCase, overwrite: bool, warn) -> None:
        inputs = case.inputs
        predict_to_folder(inputs["volume"], inputs["seeds"], case.out, engine=self.engine_for_case(),
                          overwrite=overwrite, series_uid=inputs["series_uid"], dicom_seg=self.dicom_seg,
                          report=self.report, warn=warn, prompts=inputs["prompts"], node_progress_bar=False)

    def case_facts(self, folder: Path) -> dict:
        with open(Path(folder) / "nodes.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return {"nodes": len(rows),
                "metastatic": sum(r.get("predicted_label") == "1" for r in rows),
                "to_review": sum(needs_review(r.get("status", "")) for r in rows),
                "without_mask": sum(not has_usable_mask(r.get("status", "")) for r in rows)}


def predict_cohort(manifest: str | os.PathLike, out_dir: str | os.PathLike, model: str | os.PathLike | None = None,
                   device: str = "auto", batch_size: int | None = None, *, workers: int = 1,
                   shard: str | tuple[int, int] = (1, 1), overwrite: bool = False, dicom_seg: bool = False,
                   report: bool = False, uncertainty: bool = True, summary: str | os.PathLike | None = None,
                   progress: bool | None = None) -> CohortRun:
    """Run predict on every case of a cohort manifest (or of its shard) into `out_dir`.

    This is what `lymphnode-mtl predict --manifest` runs. The manifest, the results folder and the
    model are checked before any case runs (InputError / ModelError, one line); after that a
    case's bad input fails that case alone, recorded with its one-line reason.

    Args:
        manifest: a CSV, one case per row: case_id, volume, seeds and/or prompts, optional
            series_uid and out (io/cohort_manifest.py); input paths relative to the manifest.
        out_dir: the cohort's results folder: each case's folder (`out`, relative to it, or
            case_id) and the summary CSV.
        model, device, batch_size, dicom_seg, report, uncertainty: as for predict_to_folder, for
            every case.
        workers: processes running cases side by side, each with its own engine and an equal share
            of the CPU threads.
        shard: (K, N) or "K/N": run only rows K, K+N, K+2N, ... (1-based); the N shards together
            are the whole manifest.
        overwrite: replace a case folder's finished results of another model or other inputs
            (results of this model for the same inputs are kept and skipped).
        summary: where to write the summary CSV (default: out_dir/summary.csv, or
            summary-shard-K-of-N.csv for a shard).
        progress: a progress bar over cases on stderr (None: on a terminal only).

    Returns:
        The CohortRun: one CaseOutcome per case of the shard (status done, already_done, failed
        with its reason, or pending), and the summary's path.

    With workers > 1 the workers are spawned processes, which import the calling script again:
    call this under `if __name__ == "__main__":` in a script.
    """
    job = PredictJob(None if model is None else str(model), device, batch_size, dicom_seg, report, uncertainty)
    return run_cohort(job, manifest, out_dir, workers=workers, shard=shard, overwrite=overwrite,
                      summary=summary, progress=progress)


# --- the command line -----------------------------------------------------------------------------
EPILOG = """
cohorts (--manifest CSV --out DIR): one case per row, input paths relative to the CSV:
  case_id,volume,seeds,prompts,series_uid,out      (seeds, prompts or both; series_uid, out optional)
  p001,ct/p001.nrrd,seeds/p001.mrk.json,,,
  each case's results go to DIR/<out or case_id>; DIR/summary.csv lists every case: done,
  already_done (a finished case of this model is skipped: run again to resume), failed (with its
  one-line reason; the other cases go on) or pending; exit code 1 when a case failed.
  --workers N   N processes side by side, each with its own engine
  --shard K/N   rows K, K+N, ... only, summary DIR/summary-shard-K-of-N.csv; e.g. a SLURM array:
                sbatch --array=1-8 --wrap 'lymphnode-mtl predict --manifest m.csv --out r --shard $SLURM_ARRAY_TASK_ID/8'
"""


def run(args) -> int:
    """predict --manifest."""
    refuse_single_case_options(args, ("seeds", "prompts", "series_uid"))
    run = predict_cohort(args.manifest, args.out, args.model, args.device, args.batch_size,
                         workers=args.workers or 1, shard=args.shard or "1/1", overwrite=args.overwrite,
                         dicom_seg=args.dicom_seg, report=args.report, uncertainty=not args.no_uncertainty)
    return cohort_exit_code(run)
