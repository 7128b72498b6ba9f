"""`lymphnode-mtl follow-up --manifest M.csv --out DIR`: a follow-up on every case of a cohort
manifest, through the cohort runner (cohort_runner.py): resumable, failures recorded, worker
processes, shards. `follow_up_cohort` is the Python entry point.

Manifest columns (io/cohort_manifest.py): case_id, baseline, baseline_results, follow_up; optional
seeds, baseline_series_uid, follow_up_series_uid and out. Each column means what the follow-up
option of the same name means; baseline_results is a folder (what predict wrote for the baseline),
and a case whose folder is missing or holds no results fails alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..core.node_status import NOT_FOUND
from ..io.cohort_manifest import CohortCase, ManifestColumns
from .cohort_options import cohort_exit_code, refuse_single_case_options
from .cohort_runner import CohortRun, run_cohort
from .engine_job import EngineJob
from .follow_up import follow_up_to_folder, output_files

FOLLOW_UP_COLUMNS = ManifestColumns(required_paths=("baseline", "baseline_results", "follow_up"),
                                    optional_paths=("seeds",),
                                    optional_text=("baseline_series_uid", "follow_up_series_uid"))
# the follow-up options a manifest gives per case (argparse dests); with --manifest they are refused
PER_CASE_OPTIONS = ("baseline_results", "follow_up", "seeds", "baseline_series_uid", "follow_up_series_uid")


@dataclass
class FollowUpJob(EngineJob):
    """follow_up_to_folder on one case, with one engine per process."""

    deformable: bool = True

    name = "follow-up"
    columns = FOLLOW_UP_COLUMNS
    # nodes in the follow-up table (baseline and new), baseline nodes not found, the target nodes'
    # sum of short axes at both times and its change, the suggested nodal response
    fact_columns = ("nodes", "not_found", "baseline_sum_mm", "follow_up_sum_mm", "change_percent", "response")

    def output_files(self) -> tuple[str, ...]:
        return output_files(self.dicom_seg, self.report)

    def record_inputs(self, case: CohortCase) -> dict:
        return {name: case.inputs[name] for name in ("baseline", "baseline_results", "follow_up", "seeds")}

    def run_case(self, case: CohortCase, overwrite: bool, warn) -> None:
        inputs = case.inputs
        follow_up_to_folder(inputs["baseline"], inputs["baseline_results"], inputs["follow_up"], case.out,
                            inputs["seeds"], engine=self.engine_for_case(), overwrite=overwrite,
                            baseline_series_uid=inputs["baseline_series_uid"],
                            follow_up_series_uid=inputs["follow_up_series_uid"], dicom_seg=self.dicom_seg,
                            report=self.report, deformable=self.deformable, warn=warn)

    def case_facts(self, folder: Path) -> dict:
        response = json.loads((Path(folder) / "response.json").read_text(encoding="utf-8"))
        statuses = list(response.get("nodes", {}).values())
        return {"nodes": len(statuses), "not_found": statuses.count(NOT_FOUND),
                **{k: response.get(k) for k in ("baseline_sum_mm", "follow_up_sum_mm", "change_percent")},
                "response": response.get("category")}


def follow_up_cohort(manifest: str | os.PathLike, out_dir: str | os.PathLike,
                     model: str | os.PathLike | None = None, device: str = "auto", batch_size: int | None = None, *,
                     workers: int = 1, shard: str | tuple[int, int] = (1, 1), overwrite: bool = False,
                     dicom_seg: bool = False, report: bool = False, uncertainty: bool = True,
                     deformable: bool = True, summary: str | os.PathLike | None = None,
                     progress: bool | None = None) -> CohortRun:
    """Run follow-up on every case of a cohort manifest (or of its shard) into `out_dir`.

    This is what `lymphnode-mtl follow-up --manifest` runs. The manifest, the results folder and
    the model are checked before any case runs (InputError / ModelError, one line); after that a
    case's bad input (a missing CT or baseline results folder, results made on another CT, ...)
    fails that case alone, recorded with its one-line reason.

    Args:
        manifest: a CSV, one case per row: case_id, baseline, baseline_results (a folder),
            follow_up, optional seeds (nodes new at follow-up), baseline_series_uid,
            follow_up_series_uid and out (io/cohort_manifest.py); input paths relative to the
            manifest.
        out_dir: the cohort's results folder: each case's folder (`out`, relative to it, or
            case_id) and the summary CSV.
        model, device, batch_size, dicom_seg, report, uncertainty, deformable: as for
            follow_up_to_folder, for every case.
        workers, shard, overwrite, summary, progress: as for predict_cohort (worker processes
            each with its own engine, rows K, K+N, ... of the manifest for shard "K/N", finished
            cases of this model and these inputs kept and skipped, out_dir/summary.csv).

    Returns:
        The CohortRun: one CaseOutcome per case of the shard (done, already_done, failed with its
        reason, or pending), and the summary's path.

    With workers > 1 the workers are spawned processes, which import the calling script again:
    call this under `if __name__ == "__main__":` in a script.
    """
    job = FollowUpJob(None if model is None else str(model), device, batch_size, dicom_seg, report, uncertainty,
                      deformable)
    return run_cohort(job, manifest, out_dir, workers=workers, shard=shard, overwrite=overwrite,
                      summary=summary, progress=progress)


# --- the command line -----------------------------------------------------------------------------
EPILOG = """
cohorts (--manifest CSV --out DIR): one case per row, input paths relative to the CSV:
  case_id,baseline,baseline_results,follow_up,seeds,baseline_series_uid,follow_up_series_uid,out
  p001,ct/p001-0.nrrd,results0/p001,ct/p001-1.nrrd,,,,
  (seeds, the series UIDs and out optional); each case's results go to DIR/<out or case_id>;
  DIR/summary.csv lists every case: done, already_done (a finished case of this model is skipped:
  run again to resume), failed (with its one-line reason; the other cases go on) or pending, with
  its node count, nodes not found, target sums and suggested response; exit code 1 when a case
  failed. --workers N and --shard K/N as for predict --manifest.
"""


def run(args) -> int:
    """follow-up --manifest."""
    refuse_single_case_options(args, PER_CASE_OPTIONS)
    run = follow_up_cohort(args.manifest, args.out, args.model, args.device, args.batch_size,
                           workers=args.workers or 1, shard=args.shard or "1/1", overwrite=args.overwrite,
                           dicom_seg=args.dicom_seg, report=args.report, uncertainty=not args.no_uncertainty,
                           deformable=not args.rigid_affine_only)
    return cohort_exit_code(run)
