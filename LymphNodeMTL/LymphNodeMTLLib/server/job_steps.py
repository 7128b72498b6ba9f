"""One job on the inference server, step by step, whatever carries the requests (docs/server-api.md).

health (API version, token) -> is the CT on the server? (HEAD) -> upload it once (PUT) -> submit the
job (POST) -> poll it (GET) until it is done, failed or cancelled; cancel = DELETE. `RemoteJob` holds
this sequence and the one line that says what went wrong, and what to do, for every failure; it does
no I/O itself. A transport carries its requests: the blocking stdlib client (client.py) runs a job
to its end in one call, the Slicer module's Qt client advances it one reply at a time from a timer
(no Python thread: PythonQt holds the GIL while Slicer idles).

A job kind is only the body of POST /v1/jobs (`predict_job`, `classify_job`, `refine_job`): another
kind is another body builder, and the steps stay as they are.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..core.node_result import NodeResult
from . import protocol

# The job's state on the client: the server's own states plus the steps before the job exists.
CHECKING, UPLOADING, SUBMITTING, POLLING = "checking", "uploading", "submitting", "polling"
DONE, FAILED, CANCELLED = "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
REQUEST_TIMEOUT_S = 120.0  # the first health answer waits for the model to load
UPLOAD_TIMEOUT_S = 600.0
JOB_FAILED_STATUS = 409  # error_status of a job the server ran and that failed or was cancelled
# After a request got no answer: how long `unreachable` is asked again, tick by tick, whether the
# server died (a killed local process closes its socket a moment before its death is noticed).
UNREACHABLE_GRACE_S = 2.0


# --- requests and replies -----------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """One HTTP request, relative to the server's base URL; `timeout` None: the transport's own."""

    method: str
    path: str
    body: bytes | memoryview | None = None
    headers: dict = field(default_factory=dict)
    timeout: float | None = None

    @classmethod
    def with_json(cls, method: str, path: str, obj, timeout: float | None = None) -> Request:
        return cls(method, path, json.dumps(obj, allow_nan=False).encode("utf-8"),
                   {"Content-Type": "application/json"}, timeout)


class Reply:
    """One HTTP answer: status 0 means no answer at all (refused, reset, timed out); `timed_out`:
    the request's deadline passed (the server may still be working on it)."""

    def __init__(self, status: int, payload=None, error: str = "", timed_out: bool = False):
        self.status = int(status or 0)
        self.payload = payload
        self.error = error
        self.timed_out = timed_out

    def json(self) -> dict:
        return self.payload if isinstance(self.payload, dict) else {}

    def error_line(self) -> str:
        """The server's one-line error, else the transport's."""
        text = str(self.json().get("error") or self.error or "no details")
        return " ".join(text.split())


def health_request(timeout: float | None = None) -> Request:
    return Request("GET", "/v1/health", timeout=timeout)


def volume_known_request(volume_id: str, timeout: float | None = None) -> Request:
    return Request("HEAD", f"/v1/volumes/{volume_id}", timeout=timeout)


def upload_request(volume: VolumePayload, timeout: float | None = None) -> Request:
    headers = dict(protocol.volume_headers(volume.image, volume.ijk_to_ras))
    headers["Content-Type"] = "application/octet-stream"
    return Request("PUT", f"/v1/volumes/{volume.volume_id}", protocol.volume_bytes(volume.image), headers,
                   timeout)


def submit_request(job: dict, timeout: float | None = None) -> Request:
    return Request.with_json("POST", "/v1/jobs", job, timeout)


def job_state_request(job_id: str, wait_s: float = 0.0, timeout: float | None = None) -> Request:
    """GET the job; `wait_s` > 0 holds the answer until it finishes (a long poll, at most that long)."""
    path = f"/v1/jobs/{job_id}" + (f"?wait={wait_s:g}" if wait_s > 0 else "")
    return Request("GET", path, timeout=None if timeout is None else timeout + wait_s)


def cancel_request(job_id: str, timeout: float | None = None) -> Request:
    return Request("DELETE", f"/v1/jobs/{job_id}", timeout=timeout)


# --- what a job carries -------------------------------------------------------------------------
class VolumePayload:
    """The CT as the API names and sends it (its content hash is computed once, here)."""

    def __init__(self, image: np.ndarray, ijk_to_ras, volume_id: str | None = None):
        self.image = image
        self.ijk_to_ras = ijk_to_ras
        self.volume_id = volume_id or protocol.volume_id(image, ijk_to_ras)


def predict_job(seeds, model: str | None = None, options=None) -> dict:
    """The POST /v1/jobs body (without volume_id) that segments and classifies seeds: core.case.Seed
    objects or (id, (r, a, s)) pairs."""
    seeds = [{"id": s.node_id, "ras": [float(v) for v in s.ras]} if hasattr(s, "node_id")
             else {"id": str(s[0]), "ras": [float(v) for v in s[1]]} for s in seeds]
    return _job("predict", model, options, seeds=seeds)


def classify_job(masks: list[NodeResult], model: str | None = None, options=None) -> dict:
    """The POST /v1/jobs body that classifies given masks (a radiologist's), used as they are."""
    return _job("classify", model, options, masks=[protocol.mask_to_json(m) for m in masks])


def follow_up_job(baseline_volume_id: str, masks: list[NodeResult], seeds=(), model: str | None = None,
                  options=None) -> dict:
    """The POST /v1/jobs body (without volume_id, the follow-up CT's) that carries the baseline nodes
    (their masks on the CT `baseline_volume_id`) into the follow-up CT; `seeds`: nodes new there."""
    body = predict_job(seeds, model, options)
    body.update(kind="follow_up", baseline_volume_id=baseline_volume_id,
                masks=[protocol.mask_to_json(m) for m in masks])
    return body


def refine_job(prompts, model: str | None = None, options=None) -> dict:
    """The POST /v1/jobs body that segments nodes from their prompts (core.node_prompts.NodePrompts:
    seed, line, box, clicks in order), in the prompts file's JSON form."""
    from ..io.prompt_reader import prompts_document

    return _job("refine", model, options, prompts=prompts_document(list(prompts)))


def _job(kind: str, model, options, **inputs) -> dict:
    body = {"kind": kind, **inputs, "options": dict(options or {})}
    if model is not None:
        body["model"] = model
    return body


@dataclass(frozen=True)
class FailureAdvice:
    """What a failure line tells the user to do; the Slicer module names its own settings."""

    client: str = "this client"
    token: str = "give the client the server's token"
    retry: str = "try again"
    update: str = "update the server or the client"


# --- the steps --------------------------------------------------------------------------------------
_SENDING = object()  # a request whose reply has not come yet, before the transport gave a handle


class RemoteJob:
    """One job through the steps of the module docstring; no I/O of its own.

    Args:
        send: (Request, on_reply) -> handle or None. Sends one request; `on_reply(Reply)` is called
            once, inside send (a blocking transport) or later (an asynchronous one).
        job: the POST /v1/jobs body without volume_id (predict_job, classify_job); None: only make
            sure the server holds the CT (DONE once it does).
        volume: a VolumePayload (uploaded once when the server lacks it) or the volume_id of a CT the
            server already holds.
        job_id: follow this already submitted job instead (polls only; job and volume unused).
        abort: handle -> None, drops a request in flight (on cancel); its reply, if the transport
            still delivers one (Qt does, synchronously), is ignored.
        describe: names the server in failure lines.
        poll_wait_s: > 0 makes every poll a long poll of that many seconds (a blocking transport).
        unreachable: () -> a line about a server that stopped answering (why it did), or None while
            that is not known; it never waits: after a request without an answer it is asked on each
            tick for up to UNREACHABLE_GRACE_S before the job fails with the generic line.

    tick() sends the next request when none is in flight: a job advances one reply at a time.
    After `finished`: `results` (NodeResults) when state is DONE, else `error` and `error_status`.
    """

    def __init__(self, send: Callable, job: dict | None = None, volume: VolumePayload | str | None = None,
                 job_id: str | None = None, abort: Callable | None = None,
                 describe: str = "the inference server", advice: FailureAdvice = FailureAdvice(),
                 poll_wait_s: float = 0.0, request_timeout_s: float = REQUEST_TIMEOUT_S,
                 unreachable: Callable[[], str | None] | None = None):
        self._send_request, self._abort = send, abort
        self.volume = volume
        self.volume_id = volume.volume_id if isinstance(volume, VolumePayload) else volume
        self.job = None if job is None else dict(job, volume_id=self.volume_id)
        self.describe, self.advice, self._unreachable = describe, advice, unreachable
        self.poll_wait_s, self.timeout_s = poll_wait_s, request_timeout_s
        self.state = CHECKING if job_id is None else POLLING
        self.job_id = job_id
        self.progress = ("", 0, 0)  # (stage, done, total)
        self.health = {}
        self.uploaded = False
        self.last_job = {}  # the server's last answer about the job
        self.results = None
        self.error = None
        self.error_status = 0
        self._in_flight = None
        self._deleted = False
        self._lost = None  # (reply, deadline) while asking `unreachable` why a request got no answer

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def tick(self) -> None:
        """Send what the current step needs unless a reply is still awaited."""
        if self.finished or self._in_flight is not None:
            return
        if self._lost is not None:
            self._judge_lost()
        elif self.state == CHECKING:
            self._send(health_request(self.timeout_s), self._on_health)
        elif self.state == POLLING:
            self._send(job_state_request(self.job_id, self.poll_wait_s, self.timeout_s), self._on_job_state)

    def cancel(self) -> None:
        """Stop now: no result of this job will be given out; the server job is deleted."""
        if self.finished:
            return
        step, in_flight = self.state, self._in_flight
        # Cancelled first: a reply the abort delivers at once (Qt's does) is then only ignored.
        self.state = CANCELLED
        # a POST in flight is left to arrive: its answer names the job to delete
        if in_flight not in (None, _SENDING) and step != SUBMITTING:
            self._in_flight = None
            if self._abort:
                self._abort(in_flight)
        self._delete_server_job()

    # --- sending ------------------------------------------------------------------------------
    def _send(self, request: Request, handler) -> None:
        self._in_flight = _SENDING

        def on_reply(reply: Reply) -> None:
            self._in_flight = None
            if self.state != CANCELLED or handler == self._on_submitted:  # only a POST's answer still counts
                handler(reply)

        handle = self._send_request(request, on_reply)
        if self._in_flight is _SENDING and handle is not None:
            self._in_flight = handle

    def _delete_server_job(self) -> None:
        if self.job_id and not self._deleted:
            self._deleted = True
            self._send_request(cancel_request(self.job_id, self.timeout_s), lambda reply: None)

    # --- failures -----------------------------------------------------------------------------
    def _refused(self, reply: Reply, ok_statuses) -> bool:
        """End the job unless the reply is one of ok_statuses; True also once it was cancelled."""
        if self.state == CANCELLED:
            return True
        if reply.status in ok_statuses:
            return False
        if reply.status == 0 and reply.timed_out:
            line = (f"{self.describe} did not answer in time ({reply.error}); check that it runs and is not "
                    f"overloaded, then {self.advice.retry}")
        elif reply.status == 0 and self._unreachable is not None:
            self._lost = (reply, time.monotonic() + UNREACHABLE_GRACE_S)
            self._judge_lost()
            return True
        elif reply.status == 0:
            line = self._stopped_answering(reply)
        elif reply.status in (401, 403):
            line = (f"{self.describe} refused the request ({reply.status}: {reply.error_line()}); "
                    f"{self.advice.token}")
        else:
            line = f"{self.describe} answered {reply.status}: {reply.error_line()}"
        self._fail(line, reply.status)
        return True

    def _stopped_answering(self, reply: Reply) -> str:
        return f"{self.describe} stopped answering ({reply.error}); check that it runs and {self.advice.retry}"

    def _judge_lost(self) -> None:
        """Fail with why the server did not answer once that is known, or once the grace is over."""
        reply, deadline = self._lost
        line = self._unreachable()
        if line is None and time.monotonic() < deadline:
            return  # asked again on the next tick; the caller's event loop runs meanwhile
        self._lost = None
        self._fail(line or self._stopped_answering(reply), 0)

    def _fail(self, line: str, status: int) -> None:
        self.state, self.error, self.error_status = FAILED, line, status
        self._delete_server_job()

    # --- the steps ------------------------------------------------------------------------------
    def _on_health(self, reply: Reply) -> None:
        if self._refused(reply, (200,)):
            return
        self.health = reply.json()
        version = self.health.get("api_version")
        if version != protocol.API_VERSION:
            self._fail(f"{self.describe} speaks API version {version}, {self.advice.client} needs "
                       f"{protocol.API_VERSION}; {self.advice.update}", reply.status)
        elif isinstance(self.volume, VolumePayload):
            self._send(volume_known_request(self.volume_id, self.timeout_s), self._on_volume_known)
        else:
            self._submit()

    def _on_volume_known(self, reply: Reply) -> None:
        if reply.status == 404 and self.state != CANCELLED:
            self.state = UPLOADING
            self._send(upload_request(self.volume, max(self.timeout_s, UPLOAD_TIMEOUT_S)), self._on_uploaded)
        elif not self._refused(reply, (200,)):
            self._submit()

    def _on_uploaded(self, reply: Reply) -> None:
        if not self._refused(reply, (200, 201)):
            self.uploaded = True
            self._submit()

    def _submit(self) -> None:
        if self.job is None:  # only the CT was asked for
            self.state = DONE
            return
        self.state = SUBMITTING
        self._send(submit_request(self.job, self.timeout_s), self._on_submitted)

    def _on_submitted(self, reply: Reply) -> None:
        accepted = (200, 201, 202)
        if reply.status in accepted:
            self.job_id = reply.json().get("job_id")
            if self.state == CANCELLED:  # cancelled while the job was being created: delete it now
                self._delete_server_job()
                return
        if not self._refused(reply, accepted):
            self.state = POLLING

    def _on_job_state(self, reply: Reply) -> None:
        if self._refused(reply, (200,)):
            return
        job = self.last_job = reply.json()
        progress = job.get("progress") or {}
        self.progress = (str(progress.get("stage", "")), int(progress.get("done") or 0),
                         int(progress.get("total") or 0))
        state = job.get("state")
        if state == DONE:
            try:
                self.results = [protocol.result_from_json(r) for r in job.get("results") or []]
            except Exception as error:  # an answer this client cannot read: no partial results
                self._fail(f"{self.describe} sent results {self.advice.client} cannot read ({error})",
                           reply.status)
                return
            self.state = DONE
        elif state == FAILED:
            self._fail(f"{self.describe}: the job failed: {job.get('error') or 'no details'}", JOB_FAILED_STATUS)
        elif state == CANCELLED:
            self.state = CANCELLED
            self.error_status = JOB_FAILED_STATUS
