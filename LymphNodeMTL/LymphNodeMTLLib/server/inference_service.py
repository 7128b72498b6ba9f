"""The server's state behind the HTTP layer: resident engines, the CT store and the job queue.

One InferenceService per server process. It keeps one NodeEngine per allowed model folder loaded
for the server's lifetime, holds uploaded CTs by volume_id (least recently used dropped first
beyond a memory bound), and runs jobs on worker threads: at most one job per CT and one per
engine at a time, the rest wait in arrival order. A running job is cancelled at its next batch by
raising from the engine's progress callback. Nothing here knows about HTTP.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.case import Case, Seed
from ..core.ct_plausibility import check_ct_plausibility
from ..core.errors import InputError
from ..core.geometry import VolumeGeometry
from ..core.node_result import NodeResult
from . import protocol

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
KINDS = ("predict", "classify", "refine", "follow_up")
# job options passed on to the engine when its method takes them (others are reported as ignored)
ENGINE_OPTIONS = ("uncertainty",)
FOLLOW_UP_OPTIONS = ("deformable",)  # read by the follow_up job itself
KEEP_FINISHED_JOBS = 256  # finished jobs kept for their results; older ones are forgotten

log = logging.getLogger("lymphnode_mtl.server")


class NotFound(LookupError):
    """A model, CT or job the server does not know (HTTP 404)."""


class JobCancelled(Exception):
    """Raised from the progress callback to stop a running job at its next batch."""


@dataclass
class StoredVolume:
    """A CT on the server: the engine's float32 array and its geometry."""

    image: np.ndarray
    geometry: VolumeGeometry

    @property
    def nbytes(self) -> int:
        return int(self.image.nbytes)


class VolumeStore:
    """CTs by volume_id, least recently used dropped first when their bytes pass `max_bytes`.

    Several ids may name one CT (a file read by its own hash and by the client's); the bound
    counts each CT once. A job holds its CT itself, so dropping one never breaks a queued job.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._by_id: OrderedDict[str, StoredVolume] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, vid: str) -> StoredVolume:
        with self._lock:
            vol = self._by_id.get(vid)
            if vol is None:
                raise NotFound("no CT with that volume_id on the server; upload it first (PUT /v1/volumes/{id})")
            for name in [k for k, v in self._by_id.items() if v is vol]:  # every name of this CT
                self._by_id.move_to_end(name)
            return vol

    def __contains__(self, vid: str) -> bool:
        with self._lock:
            return vid in self._by_id

    def put(self, ids, vol: StoredVolume) -> None:
        with self._lock:
            for vid in ids:
                self._by_id[vid] = vol
                self._by_id.move_to_end(vid)
            self._evict(keep=vol)

    def total_bytes(self) -> int:
        with self._lock:
            return sum(v.nbytes for v in {id(v): v for v in self._by_id.values()}.values())

    def _evict(self, keep: StoredVolume) -> None:
        while True:
            unique = {id(v): v for v in self._by_id.values()}
            if sum(v.nbytes for v in unique.values()) <= self.max_bytes:
                return
            oldest = next(v for v in self._by_id.values() if v is not keep) if len(unique) > 1 else None
            if oldest is None:
                return  # the newest CT alone passes the bound: keep it, it is the one in use
            for vid in [k for k, v in self._by_id.items() if v is oldest]:
                del self._by_id[vid]


@dataclass
class Job:
    """One predict, classify or refine run on one CT with one model.

    `case` holds the CT itself (so dropping it from the store never breaks a queued job) and, for
    predict and refine, the seeds, validated when the job was submitted; `prompts` a refine job's
    prompts per node id, checked against the CT then too."""

    job_id: str
    kind: str
    volume_id: str
    model: str
    case: Case
    masks: list[NodeResult] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    prompts: dict = field(default_factory=dict)
    baseline: Case | None = None  # follow_up: the baseline CT its masks (the baseline nodes) lie on
    summary: dict | None = None  # follow_up: both time points per node, the response, the registration
    state: str = QUEUED
    stage: str = QUEUED
    done: int = 0
    total: int = 0
    error: str | None = None
    results: list[dict] | None = None
    ignored_options: list[str] = field(default_factory=list)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)  # the work itself has ended
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None  # wall-clock seconds (time.time) on the server
    finished_at: float | None = None
    queue_position: int | None = None

    def to_json(self) -> dict:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "kind": self.kind,
            "model": self.model,
            "volume_id": self.volume_id,
            "progress": {"stage": self.stage, "done": self.done, "total": self.total},
            "queue_position": self.queue_position,
            "error": self.error,
            "results": self.results,
            "follow_up": self.summary,
            "ignored_options": list(self.ignored_options),
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


def _model_names(model_dirs) -> list[str]:
    """Names clients use for the model folders: the folder name, made unique."""
    names = []
    for d in model_dirs:
        base = Path(d).resolve().name
        name = base
        for n in itertools.count(2):
            if name not in names:
                break
            name = f"{base}-{n}"
        names.append(name)
    return names


class InferenceService:
    """Engines, CTs and jobs of one server process.

    Args:
        model_dirs: the allowed model folders (None = the bundled model); the first is the default.
        device: the engines' device ("auto", "cpu", "cuda", "cuda:N").
        max_volume_bytes: memory bound of the CT store.
        engine_factory: builds an engine from (model_dir, device); NodeEngine unless a test swaps it.
        ct_check: refuses (InputError) a stored volume that is not a plausible CT; the CLI's and the
            Slicer Logic's check (core/ct_plausibility.py) unless a test with a stand-in engine swaps it.
    """

    def __init__(self, model_dirs=(None,), device: str = "auto", max_volume_bytes: int = 4 << 30,
                 engine_factory=None, ct_check=check_ct_plausibility):
        if engine_factory is None:
            from ..inference.engine import NodeEngine

            engine_factory = lambda d, dev: NodeEngine(d, device=dev)  # noqa: E731
        from ..network.model_store import default_model_dir

        model_dirs = [d if d is not None else default_model_dir() for d in (list(model_dirs) or [None])]
        self.engines = {name: engine_factory(d, device) for name, d in zip(_model_names(model_dirs), model_dirs)}
        self.default_model = next(iter(self.engines))
        self._ct_check = ct_check
        self.volumes = VolumeStore(max_volume_bytes)
        self._jobs: dict[str, Job] = {}
        self._pending: list[Job] = []
        self._busy_volumes: set[str] = set()
        self._busy_models: set[str] = set()
        self._cond = threading.Condition()
        self._closed = False
        self._submitted = 0
        # one worker per engine: engines run side by side, never one engine twice at once
        self._workers = [threading.Thread(target=self._work, name=f"inference-{n}", daemon=True)
                         for n in range(len(self.engines))]
        for w in self._workers:
            w.start()

    # --- models -------------------------------------------------------------------------------
    def engine(self, name: str | None):
        name = name or self.default_model
        if name not in self.engines:
            raise NotFound(f"unknown model {name!r}; GET /v1/health lists the server's models")
        return name, self.engines[name]

    def models(self) -> list[dict]:
        return [{"name": name, "model_id": e.model_id, "weights_sha256": e.model.weights_sha256,
                 "default": name == self.default_model} for name, e in self.engines.items()]

    # --- CTs ----------------------------------------------------------------------------------
    def add_volume(self, image: np.ndarray, ijk_to_ras, expected_id: str | None = None,
                   also_known_as: str | None = None, hashed_id: str | None = None) -> str:
        """Store a CT under its volume_id (and optionally a second name); returns the id.

        `expected_id`: refuse (InputError) a CT whose content does not hash to it.
        `hashed_id`: the id already computed over these very bytes (a streamed upload).
        """
        vid = hashed_id or protocol.volume_id(image, ijk_to_ras)
        if expected_id is not None and vid != expected_id:
            raise InputError("the CT's content does not match the volume_id in the URL; "
                             "compute the id with protocol.volume_id over the bytes you send")
        try:  # the same content (same hash) is held already: keep the copy jobs already use
            vol = self.volumes.get(vid)
        except NotFound:
            vol = None
        if vol is not None:
            if also_known_as not in (None, vid):
                self.volumes.put([also_known_as], vol)
            return vid
        geometry = VolumeGeometry(np.asarray(ijk_to_ras, dtype=float), image.shape)
        if self._ct_check is not None:  # refused before it is stored; repairs are logged without data
            image = self._ct_check(image, geometry, name="the CT", warn=log.warning)
        # the engine works in float32 HU, as the volume reader gives it; converted once per CT
        vol = StoredVolume(np.ascontiguousarray(image, dtype=np.float32), geometry)
        ids = [vid] if also_known_as in (None, vid) else [vid, also_known_as]
        self.volumes.put(ids, vol)
        return vid

    def has_volume(self, vid: str) -> bool:
        return vid in self.volumes

    def counts(self) -> dict:
        """Jobs submitted since start, queued, running and finished (kept); the CT store's bytes."""
        with self._cond:
            states = [j.state if not (j.state == CANCELLED and not j.finished.is_set()) else RUNNING
                      for j in self._jobs.values()]
        return {"submitted": self._submitted, "queued": states.count(QUEUED), "running": states.count(RUNNING),
                "finished": sum(s in FINISHED for s in states), "volume_bytes": self.volumes.total_bytes()}

    # --- jobs ---------------------------------------------------------------------------------
    def submit(self, kind: str, volume_id: str, model: str | None = None, seeds=(), masks=(),
               options: dict | None = None, prompts: dict | None = None,
               baseline_volume_id: str | None = None) -> Job:
        """Queue a job; InputError for input the engine would refuse, NotFound for unknown names.
        A refine job segments `seeds` (core.case.Seed) with `prompts` (node id -> NodePrompts). A
        follow_up job carries the baseline nodes `masks`, on the CT `baseline_volume_id`, into the
        CT `volume_id`, and segments `seeds` there as new nodes."""
        if kind not in KINDS:
            raise InputError(f"kind must be one of {', '.join(KINDS)}")
        name, engine = self.engine(model)
        vol = self.volumes.get(volume_id)
        options = dict(options or {})
        case = Case(vol.image, vol.geometry, list(seeds))
        job = Job(uuid.uuid4().hex, kind, volume_id, name, case, list(masks), options, dict(prompts or {}))
        method = engine.classify_masks if kind == "classify" else engine.predict
        accepted = inspect.signature(method).parameters
        job.ignored_options = sorted(k for k in options if (k not in ENGINE_OPTIONS or k not in accepted)
                                     and not (kind == "follow_up" and k in FOLLOW_UP_OPTIONS))
        if kind == "follow_up":
            self._check_follow_up(job, baseline_volume_id)
        elif kind != "classify":
            # the server's one seed check: refused now, not in the queue; the engine trusts it
            case.validate_seeds()
            job.total = len(case.seeds)
            if kind == "refine":
                engine.check_prompts(case, job.prompts)
        else:
            _check_masks(job.masks, vol.geometry.shape_kji)
            job.total = len(job.masks)
        with self._cond:
            if self._closed:
                raise InputError("the server is shutting down; try again once it has restarted")
            self._jobs[job.job_id] = job
            self._submitted += 1
            self._pending.append(job)
            self._forget_old_jobs()
            self._cond.notify_all()
        return job

    def _check_follow_up(self, job: Job, baseline_volume_id: str | None) -> None:
        from ..inference.follow_up_study import check_new_seeds

        if not baseline_volume_id:
            raise InputError("a follow_up job needs baseline_volume_id, the baseline CT its masks lie on")
        if not job.masks:
            raise InputError("a follow_up job needs the baseline nodes as masks")
        baseline = self.volumes.get(baseline_volume_id)
        _check_masks(job.masks, baseline.geometry.shape_kji)
        check_new_seeds(job.masks, job.case.seeds)
        if job.case.seeds:
            job.case.validate_seeds()
        job.baseline = Case(baseline.image, baseline.geometry)
        job.total = len(job.masks) + len(job.case.seeds)

    def warm_up(self) -> None:
        """Queue one small predict per engine on a synthetic CT, so the first real job does not pay
        for the framework's first pass (and, on a GPU, its kernel autotuning). Not counted, not
        listed; real jobs on that engine simply queue behind it."""
        size = 32
        geometry = VolumeGeometry(np.eye(4), (size, size, size))
        image = np.full((size, size, size), -100.0, np.float32)  # fat, in HU
        centre = tuple(float(c) for c in geometry.ijk_to_ras_points([[size / 2] * 3])[0])
        with self._cond:
            for name in self.engines:
                job = Job(uuid.uuid4().hex, "predict", f"warm-up/{name}", name,
                          Case(image, geometry, [Seed("warm-up", centre)]))
                job.total = 1
                self._pending.append(job)
            self._cond.notify_all()

    def job(self, job_id: str) -> Job:
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                raise NotFound("unknown job_id; it never existed or finished long ago")
            if job.state == QUEUED:
                waiting = [j for j in self._pending if j.volume_id == job.volume_id or j.model == job.model]
                job.queue_position = waiting.index(job) if job in waiting else None
            else:
                job.queue_position = None
            return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job now, a running one at its next batch; finished jobs stay as they are."""
        job = self.job(job_id)
        with self._cond:
            if job.state == QUEUED:
                self._pending.remove(job)
                job.state = job.stage = CANCELLED
                job.finished_at = time.time()
                job.finished.set()
            elif job.state == RUNNING:
                job.cancel_requested.set()
                job.state = job.stage = CANCELLED  # its results will never be delivered
            self._cond.notify_all()
        return job

    def close(self) -> None:
        """Stop the workers: queued jobs are cancelled, running ones stop at their next batch."""
        with self._cond:
            self._closed = True
            for job in self._pending:
                job.state = job.stage = CANCELLED
                job.finished.set()
            self._pending.clear()
            for job in self._jobs.values():
                if job.state == RUNNING:
                    job.cancel_requested.set()
            self._cond.notify_all()

    # --- workers ------------------------------------------------------------------------------
    def _next_runnable(self) -> Job | None:
        for job in self._pending:
            if job.volume_id not in self._busy_volumes and job.model not in self._busy_models:
                return job
        return None

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (job := self._next_runnable()) is None:
                    self._cond.wait()
                if self._closed:
                    return
                self._pending.remove(job)
                self._busy_volumes.add(job.volume_id)
                self._busy_models.add(job.model)
                job.state, job.stage, job.started_at = RUNNING, "nodes", time.time()
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._busy_volumes.discard(job.volume_id)
                    self._busy_models.discard(job.model)
                    job.finished_at = time.time()
                    job.finished.set()
                    self._cond.notify_all()

    def _run(self, job: Job) -> None:
        engine = self.engines[job.model]

        def progress(stage: str, done: int, total: int) -> None:
            with self._cond:  # as cancel(): a cancelled job's stage never goes back to a working one
                job.done, job.total = int(done), int(total)
                if job.cancel_requested.is_set():
                    raise JobCancelled  # out of the engine between two batches
                job.stage = stage

        try:
            case = job.case
            method = engine.classify_masks if job.kind == "classify" else engine.predict
            accepted = inspect.signature(method).parameters
            kwargs = {k: v for k, v in job.options.items() if k in ENGINE_OPTIONS and k in accepted}
            if job.kind == "refine":
                kwargs["prompts"] = job.prompts
            if "progress" in accepted:
                kwargs["progress"] = progress
            if job.cancel_requested.is_set():
                raise JobCancelled
            if job.kind == "follow_up":
                results, job.summary = _follow_up(engine, job)
            elif job.kind != "classify":
                results = method(case, **kwargs)
            else:
                results = method(case, job.masks, **kwargs)
            if job.cancel_requested.is_set():
                raise JobCancelled
            encoded = [protocol.result_to_json(r) for r in results]
            self._finish(job, DONE, results=encoded)
        except JobCancelled:
            self._finish(job, CANCELLED)
        except (InputError, MemoryError) as e:
            self._finish(job, FAILED, error=_one_line(str(e)))
        except Exception as e:  # the server lives on; the client gets the kind of failure, not the data
            # the traceback's frames, not the message: messages may quote seeds or paths
            log.error("job failed: %s\n%s", type(e).__name__, "".join(traceback.format_tb(e.__traceback__)))
            self._finish(job, FAILED, error=f"the engine failed ({type(e).__name__}); see the server log")

    def _finish(self, job: Job, state: str, error: str | None = None, results=None) -> None:
        with self._cond:
            job.stage = state
            if job.state != RUNNING:
                job.stage = job.state  # cancelled while its last batch ran: stays cancelled
                return
            # results before state: a reader that sees "done" always sees the results
            job.error, job.results = error, results
            if state == DONE:
                job.done = job.total
            job.state = state

    def _forget_old_jobs(self) -> None:
        finished = [j for j in self._jobs.values() if j.state in FINISHED and j.finished.is_set()]
        for job in finished[: max(0, len(finished) - KEEP_FINISHED_JOBS)]:
            del self._jobs[job.job_id]


def _follow_up(engine, job: Job) -> tuple[list[NodeResult], dict]:
    """A follow_up job's run: the baseline masks re-classified and measured on the baseline CT (as
    the baseline results read from a folder are), then the follow-up study of commands/follow_up.py."""
    from ..inference.follow_up_study import run_follow_up
    from ..outputs.follow_up_table import change_row

    baseline_nodes = engine.classify_masks(job.baseline, job.masks)
    study = run_follow_up(engine, job.baseline, baseline_nodes, job.case, job.case.seeds,
                          bool(job.options.get("deformable", True)))
    summary = {"nodes": [change_row(c) for c in study.changes], "response": study.response.as_dict(),
               "registration": study.registration.record(), "baseline": [protocol.result_to_json(n) for n in baseline_nodes]}
    return study.follow_up_results(), protocol.json_safe(summary)


def _check_masks(masks: list[NodeResult], shape_kji) -> None:
    if not masks:
        raise InputError("classify needs at least one mask")
    ids = [m.node_id for m in masks]
    if len(set(ids)) != len(ids):
        raise InputError("two masks share one id; give every node its own id")
    for m in masks:
        if any(b > s for b, s in zip(m.bbox_stop_kji, shape_kji)):
            raise InputError(f"the box of mask {m.node_id} reaches outside the CT; send boxes within its shape")


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "the job failed"
