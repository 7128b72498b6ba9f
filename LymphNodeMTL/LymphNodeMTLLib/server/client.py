"""A small client of the inference server API (docs/server-api.md), on the standard library only.

The blocking transport of job_steps.py: `predict`, `classify` and `run_job` drive a RemoteJob to
its end, the single-request calls (health, upload_volume, submit_predict, job, cancel, ...) send
the same requests one at a time. Used by the tests, the benchmark and, outside Slicer's Qt, by the
Slicer module. One keep-alive connection per client (a request costs a round trip, not a TCP and
TLS handshake); every refusal of the server becomes a ServerError carrying the status and one line.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import urllib.parse

import numpy as np

from ..core.node_result import NodeResult
from .job_steps import (
    DONE,
    FAILED,
    FINISHED,
    RemoteJob,
    Reply,
    Request,
    VolumePayload,
    cancel_request,
    classify_job,
    follow_up_job,
    health_request,
    job_state_request,
    predict_job,
    refine_job,
    submit_request,
    upload_request,
    volume_known_request,
)


class ServerError(Exception):
    """The server refused a request (status >= 400) or could not be reached (status 0)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class InferenceClient:
    """Talks to one server.

    Args:
        url: the server's base URL, e.g. the one `lymphnode-mtl serve` prints.
        token: the server's token, if it has one.
        timeout: seconds per request (long polls add their wait to it).
        ssl_context: for https; None verifies against the system's certificates.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 120.0,
                 ssl_context: ssl.SSLContext | None = None):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not a server URL: {url!r}; expected http://HOST:PORT or https://HOST:PORT")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._token = token
        self._timeout = timeout
        self._ssl = ssl_context
        self._conn = None
        self._lock = threading.Lock()

    # --- transport ----------------------------------------------------------------------------
    def _connection(self, timeout: float):
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                                         context=self._ssl)
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        self._conn.timeout = timeout
        if self._conn.sock is not None:
            self._conn.sock.settimeout(timeout)
        return self._conn

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def send(self, request: Request) -> Reply:
        """One request; its Reply (status 0: no answer, with the reason in `error`). Never raises."""
        headers = dict(request.headers)
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        method, path, body = request.method, request.path, request.body
        with self._lock:
            for attempt in (0, 1):
                reused = self._conn is not None
                try:
                    conn = self._connection(request.timeout or self._timeout)
                    try:
                        conn.request(method, path, body=body, headers=headers)
                    except (BrokenPipeError, ConnectionResetError):
                        if method != "PUT":
                            raise
                        # an upload refused early (401, 413) still has its answer waiting
                    response = conn.getresponse()
                    data = response.read()
                    break
                except (http.client.HTTPException, ConnectionError) as e:
                    self._drop()
                    # a kept-alive connection the server had closed: the request never ran, so
                    # repeat it once on a fresh connection; a fresh one failing is a real failure
                    if attempt or not reused:
                        return Reply(0, None, f"the server at {self.url} closed the connection "
                                              f"({type(e).__name__}); is it still running?")
                except OSError as e:  # refused, unreachable, timed out
                    self._drop()
                    return Reply(0, None, f"no answer from the server at {self.url} ({e}); "
                                          "check the URL and that the server is running",
                                 timed_out=isinstance(e, TimeoutError))
            if (response.getheader("Connection") or "").lower() == "close":
                self._drop()
        parsed = None
        if data:
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = None
        return Reply(response.status, parsed)

    def request(self, method: str, path: str, body=None, headers=None, timeout: float | None = None):
        """(status, parsed JSON or None) of one request; ServerError for status >= 400 or no answer.
        A dict or list body is sent as JSON."""
        headers = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body, allow_nan=False).encode()
            headers["Content-Type"] = "application/json"
        return self._answer(self.send(Request(method, path, body, headers, timeout)))

    @staticmethod
    def _answer(reply: Reply):
        if reply.status == 0:
            raise ServerError(0, reply.error)
        if reply.status >= 400:
            message = reply.payload.get("error") if isinstance(reply.payload, dict) else None
            raise ServerError(reply.status, message or f"HTTP {reply.status}")
        return reply.status, reply.payload

    def run_job(self, job: dict | None, volume: VolumePayload | str | None = None, job_id: str | None = None,
                timeout: float | None = None, poll_s: float = 10.0) -> RemoteJob:
        """Run a job through its steps (job_steps.RemoteJob: the arguments are its own) to its end
        and return it; ServerError (the failed step's status and one line) when it failed, or
        ServerError(0) when it has not finished after `timeout` seconds (the job keeps running)."""
        remote = self._drive(RemoteJob(self._send_and_reply, job, volume, job_id, request_timeout_s=self._timeout,
                                       describe=f"the inference server at {self.url}"), timeout, poll_s)
        if remote.state == FAILED:
            raise ServerError(remote.error_status, remote.error)
        return remote

    def _drive(self, remote: RemoteJob, timeout: float | None, poll_s: float) -> RemoteJob:
        """Tick until the job finished; each poll is a long poll of at most `poll_s` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not remote.finished:
            left = poll_s if deadline is None else min(poll_s, deadline - time.monotonic())
            if left <= 0 and remote.last_job:  # polled at least once, and out of time
                raise ServerError(0, f"the job has not finished within {timeout:g} s")
            remote.poll_wait_s = max(left, 0.0)
            remote.tick()
        return remote

    def _send_and_reply(self, request: Request, on_reply) -> None:
        on_reply(self.send(request))

    # --- the API ------------------------------------------------------------------------------
    def health(self) -> dict:
        return self._answer(self.send(health_request()))[1]

    def has_volume(self, volume_id: str) -> bool:
        reply = self.send(volume_known_request(volume_id))
        if reply.status == 404:
            return False
        self._answer(reply)
        return True

    def upload_volume(self, image: np.ndarray, ijk_to_ras, volume_id: str | None = None) -> str:
        """PUT the CT; returns its volume_id."""
        volume = VolumePayload(image, ijk_to_ras, volume_id)
        self._answer(self.send(upload_request(volume)))
        return volume.volume_id

    def ensure_volume(self, image: np.ndarray, ijk_to_ras) -> str:
        """The CT's volume_id, uploading it only when the server does not hold it yet."""
        return self.run_job(None, VolumePayload(image, ijk_to_ras)).volume_id

    def volume_from_file(self, path, volume_id: str) -> dict:
        """Ask a local server to read the CT from a file; returns {"volume_id", "shape"}."""
        return self.request("POST", f"/v1/volumes/{volume_id}/from-file", body={"path": str(path)})[1]

    def submit_predict(self, volume_id: str, seeds, model: str | None = None, options=None) -> str:
        """seeds: (id, (r, a, s)) pairs or core.case.Seed objects; returns the job_id."""
        return self._submit(dict(predict_job(seeds, model, options), volume_id=volume_id))

    def submit_classify(self, volume_id: str, masks: list[NodeResult], model: str | None = None,
                        options=None) -> str:
        return self._submit(dict(classify_job(masks, model, options), volume_id=volume_id))

    def submit_follow_up(self, volume_id: str, baseline_volume_id: str, masks: list[NodeResult], seeds=(),
                         model: str | None = None, options=None) -> str:
        """The baseline nodes (masks on the CT baseline_volume_id) carried into the CT volume_id; the
        finished job's "follow_up" holds both time points per node and the suggested response."""
        return self._submit(dict(follow_up_job(baseline_volume_id, masks, seeds, model, options),
                                 volume_id=volume_id))

    def _submit(self, body: dict) -> str:
        return self._answer(self.send(submit_request(body)))[1]["job_id"]

    def job(self, job_id: str, wait: float = 0.0) -> dict:
        """The job's state; `wait` > 0 holds the answer until it finishes (at most that long)."""
        return self._answer(self.send(job_state_request(job_id, wait, self._timeout)))[1]

    def cancel(self, job_id: str) -> dict:
        return self._answer(self.send(cancel_request(job_id)))[1]

    def wait(self, job_id: str, timeout: float | None = None, poll_s: float = 10.0) -> dict:
        """The finished job (done, failed or cancelled); ServerError(0) after `timeout` seconds."""
        remote = self._drive(RemoteJob(self._send_and_reply, job_id=job_id, request_timeout_s=self._timeout,
                                       describe=f"the inference server at {self.url}"), timeout, poll_s)
        if remote.last_job.get("state") not in FINISHED:  # a poll was refused
            raise ServerError(remote.error_status, remote.error)
        return remote.last_job

    def run(self, job_id: str, timeout: float | None = None) -> list[NodeResult]:
        """Wait for a job and decode its results; ServerError when it failed or was cancelled."""
        return self._results(self.run_job(None, job_id=job_id, timeout=timeout))

    def predict(self, volume, seeds, model: str | None = None, options=None,
                timeout: float | None = None) -> list[NodeResult]:
        """volume: a VolumePayload (sent when the server lacks it) or the volume_id of a CT it holds."""
        return self._results(self.run_job(predict_job(seeds, model, options), volume, timeout=timeout))

    def classify(self, volume, masks: list[NodeResult], model: str | None = None,
                 options=None, timeout: float | None = None) -> list[NodeResult]:
        return self._results(self.run_job(classify_job(masks, model, options), volume, timeout=timeout))

    def refine(self, volume, prompts, model: str | None = None, options=None,
               timeout: float | None = None) -> list[NodeResult]:
        """Nodes from their prompts (core.node_prompts.NodePrompts, each with its seed, line, box and
        clicks in order), as predict --prompts segments them."""
        return self._results(self.run_job(refine_job(prompts, model, options), volume, timeout=timeout))

    @staticmethod
    def _results(job: RemoteJob) -> list[NodeResult]:
        if job.state != DONE:
            raise ServerError(job.error_status, job.error or f"the job was {job.state}")
        return job.results
