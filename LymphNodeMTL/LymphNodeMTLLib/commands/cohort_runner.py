"""Run one job per case of a cohort manifest: resumable, a failed case recorded and the rest run on,
in worker processes, one shard of the manifest per machine.

A job is the per-case work of a command (`predict` today, `follow-up` alike): a `CohortJob`
subclass says which manifest columns it reads, which files a finished case holds, which run.json
fields make a finished case its own (same model, same inputs), and runs one case into its folder.
The runner does the rest:

- resume: a case whose folder holds a finished run of this job (outputs/finished_run.py, the same
  identity and inputs) is skipped as `already_done`; a folder holding finished results of another
  model or other inputs is a failed case unless `overwrite`. Runs write all or nothing
  (output_folder.py), so a cohort killed at any moment resumes where it was.
- failures: a case whose input is refused (InputError, ModelError) or whose run raises is recorded
  with one line and the others go on.
- workers: `workers` processes (spawned: no state shared with this one), each starting the job
  once (its engine) and then taking one case at a time; the CPU threads divided among them. A
  worker that dies (killed, out of memory) fails the cases it held; a fresh pool takes the rest.
  Workers stop when this process ends, however it ends.
- shards: the K-th of N shares of the manifest's rows (io/cohort_manifest.py), for a SLURM array or
  Kubernetes indexed Jobs; each shard writes its own summary, and the shares together are the run.
- the summary CSV (outputs/cohort_summary.py), rewritten after every case; a progress bar over
  cases on a terminal.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import InputError, ModelError
from ..io.cohort_manifest import CohortCase, ManifestColumns, parse_shard, read_cohort_manifest, select_shard
from ..outputs.cohort_summary import (ALREADY_DONE, DONE, FAILED, PENDING, CaseOutcome,
                                      write_cohort_summary)
from ..outputs.finished_run import finished_record
from ..outputs.output_folder import check_folder_path, cleanup_on_signals
from .parent_watch import stop_with_parent

WORKER_DIED = ("its worker process ended abruptly (killed, or out of memory); run the cohort again "
               "to retry it")


class CohortJob:
    """The per-case work of a command run over a cohort. Instances are sent to worker processes
    (pickled), so keep heavy state (an engine) out of __init__ and make it in start()."""

    name = "job"
    columns = ManifestColumns(required_paths=())
    fact_columns: tuple[str, ...] = ()  # the job's own columns in the summary
    _started = False  # start() has run in this process

    def ensure_started(self, threads: int | None) -> bool:
        """start() once per process; returns whether it ran now."""
        if self._started:
            return False
        self.start(threads)
        self._started = True
        return True

    def output_files(self) -> tuple[str, ...]:
        """The files a finished case's folder holds (its run.json lists them)."""
        raise NotImplementedError

    def identity(self) -> dict:
        """The run.json fields a finished case must share with this job (e.g. the model's id and
        weights hash). Called once, before any case: refuse a bad model here, in one line."""
        raise NotImplementedError

    def record_inputs(self, case: CohortCase) -> dict:
        """The run.json `inputs` a run of this case writes: a finished case must have read these."""
        raise NotImplementedError

    def start(self, threads: int | None) -> None:
        """Make what every case reuses (the engine), once per process. threads: this process's
        share of the CPU threads, for torch and SimpleITK (None: their defaults)."""

    def run_case(self, case: CohortCase, overwrite: bool, warn) -> None:
        """Run one case into case.out, all or nothing; a refused input raises InputError."""
        raise NotImplementedError

    def case_facts(self, folder: Path) -> dict:
        """The job's summary columns for a finished case, read back from its folder."""
        return {}


@dataclass
class CohortRun:
    """What a cohort run did: one outcome per case of its shard, in manifest order."""

    outcomes: list[CaseOutcome]
    summary: Path
    shard: tuple[int, int] = (1, 1)
    cases_in_manifest: int = 0

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.status == FAILED]

    def line(self) -> str:
        """One line for the end of the run."""
        shard = f" (shard {self.shard[0]}/{self.shard[1]} of {self.cases_in_manifest})" if self.shard[1] > 1 else ""
        return (f"{len(self.outcomes)} cases{shard}: {self.count(DONE)} done, {self.count(ALREADY_DONE)} "
                f"already done, {self.count(FAILED)} failed; summary: {self.summary}")


def summary_name(shard: tuple[int, int]) -> str:
    k, n = shard
    return "summary.csv" if n == 1 else f"summary-shard-{k}-of-{n}.csv"


def run_cohort(job: CohortJob, manifest, results_dir, *, workers: int = 1, shard=(1, 1),
               overwrite: bool = False, summary=None, progress: bool | None = None) -> CohortRun:
    """Run `job` on every case of `manifest` (its `shard`: (K, N) or "K/N") into `results_dir`.

    Refuses in one line (InputError), before any case runs: a bad manifest, an unusable results
    folder, a bad model (job.identity()). Then no case's failure stops the others. Returns the
    outcomes; the summary CSV is `summary` or results_dir/summary.csv (summary-shard-K-of-N.csv).
    progress: a bar over cases (None: on a terminal only).
    """
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    shard = parse_shard(shard if isinstance(shard, str) else f"{shard[0]}/{shard[1]}")
    results_dir = Path(results_dir)
    check_folder_path(results_dir)
    cases = read_cohort_manifest(manifest, job.columns, results_dir)
    mine = select_shard(cases, *shard)
    summary = Path(summary) if summary is not None else results_dir / summary_name(shard)
    clash = next((c for c in cases if c.out == Path(os.path.normpath(summary.absolute()))), None)
    if clash is not None:
        raise InputError(f"case {clash.case_id!r} would write its results into the summary file {summary}; "
                         "give it another 'out' folder")
    identity = job.identity()
    run = CohortRun([CaseOutcome(c.case_id, c.out) for c in mine], summary, shard, len(cases))
    todo = []
    for case, outcome in zip(mine, run.outcomes):
        earlier = finished_record(case.out, job.output_files())
        if earlier is not None and _same_run(earlier, identity, job.record_inputs(case)):
            outcome.status, outcome.facts = ALREADY_DONE, _facts(job, case.out)
        elif earlier is None or overwrite:
            todo.append((case, outcome))
        else:
            outcome.status = FAILED
            outcome.reason = (f"{case.out} holds finished results of {_difference(earlier, identity, job.record_inputs(case))}; "
                              "pass --overwrite to replace them, or give the case another 'out' folder")
    _Execution(run, job, progress).execute(todo, workers, overwrite)
    return run


def _facts(job: CohortJob, folder: Path) -> dict:
    """The job's summary figures of a finished case; none where its files cannot be read (a
    table edited by hand is no reason to stop a cohort)."""
    try:
        return job.case_facts(folder)
    except Exception:  # unreadable, or edited into another shape: the figures stay empty
        return {}


def _same_run(record: dict, identity: dict, inputs: dict) -> bool:
    return all(record.get(k) == v for k, v in identity.items()) and record.get("inputs") == inputs


def _difference(record: dict, identity: dict, inputs: dict) -> str:
    differing = [k for k, v in identity.items() if record.get(k) != v]
    if differing:
        return f"another model ({', '.join(f'{k} {record.get(k)}' for k in differing)})"
    return "other inputs (" + ", ".join(f"{k} {v}" for k, v in (record.get("inputs") or {}).items()
                                        if inputs.get(k) != v) + ")"


@dataclass
class _Attempt:
    """One case's run as a worker reports it."""

    reason: str | None  # None: it finished
    seconds: float
    warnings: list[str]


def _attempt(job: CohortJob, case: CohortCase, overwrite: bool, threads: int | None) -> _Attempt:
    """Run one case; every failure becomes its one-line reason (KeyboardInterrupt and the signals
    that stop a run pass through)."""
    warnings: list[str] = []
    t0 = time.perf_counter()
    try:
        if job.ensure_started(threads):
            t0 = time.perf_counter()  # a case's seconds are its own, not the engine's start
        job.run_case(case, overwrite, warnings.append)
        reason = None
    except (InputError, ModelError) as e:
        reason = str(e)
    except Exception as e:  # a bug or an environment fault in one case: recorded, the rest go on
        lines = str(e).strip().splitlines()
        reason = f"{type(e).__name__}: {lines[0] if lines else 'no message'}"
    return _Attempt(reason, time.perf_counter() - t0, warnings)


# --- worker processes: the job, started once per process ----------------------------------------
_WORKER: dict = {}


def _worker_init(job: CohortJob, overwrite: bool, threads: int, parent: int) -> None:
    # Ctrl-C reaches the whole process group: this process's parent stops the workers (SIGTERM,
    # which cleans a case's staging folder), so a stray SIGINT does not print tracebacks here
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_with_parent(parent, every_s=0.5, direct=True)
    _WORKER.update(job=job, overwrite=overwrite, threads=threads)


def _worker_attempt(case: CohortCase) -> _Attempt:
    try:
        return _attempt(_WORKER["job"], case, _WORKER["overwrite"], _WORKER["threads"])
    except KeyboardInterrupt:
        # SIGTERM (from the parent, or from the parent watch when the parent died): the case has
        # removed its staging folder on the way out; the worker ends here rather than going back
        # to wait for cases that will never come
        os._exit(128 + signal.SIGTERM)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may use (SLURM, taskset, cgroups)
    except AttributeError:
        return os.cpu_count() or 1


class _Execution:
    """The running part of a cohort: cases in order, outcomes recorded, the summary rewritten after
    each, a progress bar and one line per failure on stderr."""

    def __init__(self, cohort: CohortRun, job: CohortJob, progress: bool | None):
        self.cohort, self.job = cohort, job
        self.show = progress

    def execute(self, todo, workers: int, overwrite: bool) -> None:
        from tqdm import tqdm

        already = len(self.cohort.outcomes) - len(todo)
        self.bar = tqdm(total=len(self.cohort.outcomes), initial=already, desc=self.job.name, unit="case",
                        disable=None if self.show is None else not self.show, file=sys.stderr)
        try:
            for outcome in self.cohort.outcomes:
                if outcome.status == FAILED:  # refused before running: said once, like the others
                    self._say(f"case {outcome.case_id} failed: {outcome.reason}")
            self._write()
            with cleanup_on_signals():
                if workers == 1 or len(todo) <= 1:
                    for case, outcome in todo:
                        self._record(case, outcome, _attempt(self.job, case, overwrite, None))
                else:
                    self._in_workers(todo, min(workers, len(todo)), overwrite)
        finally:
            self._write()  # cases not run stay `pending`
            self.bar.close()

    def _in_workers(self, todo, workers: int, overwrite: bool) -> None:
        threads = max(1, _cpus() // workers)
        context = multiprocessing.get_context("spawn")  # no torch state or threads inherited
        waiting = list(todo)
        while waiting:
            pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                       initargs=(self.job, overwrite, threads, os.getpid()))
            try:
                if not self._drain(pool, waiting, workers):  # a pool that cannot even start
                    for case, outcome in waiting:
                        self._record(case, outcome, _Attempt(WORKER_DIED, 0.0, []))
                    waiting.clear()
            except BaseException:
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.terminate()  # SIGTERM: the worker's case removes its staging folder
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            pool.shutdown(wait=True)

    def _drain(self, pool, waiting: list, workers: int) -> bool:
        """Keep `workers` cases in flight (no queue behind them: a dying worker takes only its own
        case down) until all ran or the pool broke; then `waiting` holds the cases not yet sent.
        Returns whether any case was sent."""
        running = {}
        broken, sent = False, 0
        while (waiting and not broken) or running:
            while waiting and not broken and len(running) < workers:
                case, outcome = waiting.pop(0)
                try:
                    running[pool.submit(_worker_attempt, case)] = (case, outcome)
                    sent += 1
                except BrokenProcessPool:
                    waiting.insert(0, (case, outcome))
                    broken = True
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                case, outcome = running.pop(future)
                try:
                    attempt = future.result()
                except BrokenProcessPool:
                    broken = True
                    attempt = _Attempt(WORKER_DIED, 0.0, [])
                self._record(case, outcome, attempt)
        return sent > 0

    def _record(self, case: CohortCase, outcome: CaseOutcome, attempt: _Attempt) -> None:
        outcome.seconds, outcome.warnings = attempt.seconds, attempt.warnings
        for line in attempt.warnings:
            self._say(f"warning: case {case.case_id}: {line}")
        if attempt.reason is None:
            outcome.status, outcome.reason = DONE, ""
            outcome.facts = _facts(self.job, case.out)
        else:
            outcome.status, outcome.reason = FAILED, attempt.reason
            self._say(f"case {case.case_id} failed: {attempt.reason}")
        self.bar.update(1)
        self._write()

    def _write(self) -> None:
        write_cohort_summary(self.cohort.summary, self.cohort.outcomes, self.job.fact_columns)

    def _say(self, line: str) -> None:
        self.bar.write(f"lymphnode-mtl: {line}", file=sys.stderr)

