"""A small client of the inference server API (docs/server-api.md), on the standard library only.

Used by the tests, the benchmark and, as a fallback transport, by the Slicer module. One
keep-alive connection per client (a request costs a round trip, not a TCP and TLS handshake);
every refusal of the server becomes a ServerError carrying the status and the server's one line.
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
from . import protocol

FINISHED = ("done", "failed", "cancelled")


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

    def request(self, method: str, path: str, body=None, headers=None, timeout: float | None = None):
        """(status, parsed JSON or None) of one request; ServerError for status >= 400."""
        headers = dict(headers or {})
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if isinstance(body, (dict, list)):
            body = json.dumps(body, allow_nan=False).encode()
            headers["Content-Type"] = "application/json"
        with self._lock:
            for attempt in (0, 1):
                reused = self._conn is not None
                conn = self._connection(timeout or self._timeout)
                try:
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
                        raise ServerError(0, f"the server at {self.url} closed the connection "
                                             f"({type(e).__name__}); is it still running?") from None
                except OSError as e:  # refused, unreachable, timed out
                    self._drop()
                    raise ServerError(0, f"no answer from the server at {self.url} ({e}); "
                                         "check the URL and that the server is running") from None
            if (response.getheader("Connection") or "").lower() == "close":
                self._drop()
        parsed = None
        if data:
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = None
        if response.status >= 400:
            message = parsed.get("error") if isinstance(parsed, dict) else None
            raise ServerError(response.status, message or f"HTTP {response.status}")
        return response.status, parsed

    # --- the API ------------------------------------------------------------------------------
    def health(self) -> dict:
        return self.request("GET", "/v1/health")[1]

    def has_volume(self, volume_id: str) -> bool:
        try:
            self.request("HEAD", f"/v1/volumes/{volume_id}")
        except ServerError as e:
            if e.status == 404:
                return False
            raise
        return True

    def upload_volume(self, image: np.ndarray, ijk_to_ras, volume_id: str | None = None) -> str:
        """PUT the CT; returns its volume_id."""
        volume_id = volume_id or protocol.volume_id(image, ijk_to_ras)
        headers = protocol.volume_headers(image, ijk_to_ras)
        headers["Content-Type"] = "application/octet-stream"
        self.request("PUT", f"/v1/volumes/{volume_id}", body=protocol.volume_bytes(image), headers=headers)
        return volume_id

    def ensure_volume(self, image: np.ndarray, ijk_to_ras) -> str:
        """The CT's volume_id, uploading it only when the server does not hold it yet."""
        volume_id = protocol.volume_id(image, ijk_to_ras)
        if not self.has_volume(volume_id):
            self.upload_volume(image, ijk_to_ras, volume_id)
        return volume_id

    def volume_from_file(self, path, volume_id: str) -> dict:
        """Ask a local server to read the CT from a file; returns {"volume_id", "shape"}."""
        return self.request("POST", f"/v1/volumes/{volume_id}/from-file", body={"path": str(path)})[1]

    def submit_predict(self, volume_id: str, seeds, model: str | None = None, options=None) -> str:
        """seeds: (id, (r, a, s)) pairs or core.case.Seed objects; returns the job_id."""
        seeds = [{"id": s.node_id, "ras": [float(v) for v in s.ras]} if hasattr(s, "node_id")
                 else {"id": str(s[0]), "ras": [float(v) for v in s[1]]} for s in seeds]
        return self._submit({"volume_id": volume_id, "kind": "predict", "model": model, "seeds": seeds,
                             "options": dict(options or {})})

    def submit_classify(self, volume_id: str, masks: list[NodeResult], model: str | None = None,
                        options=None) -> str:
        return self._submit({"volume_id": volume_id, "kind": "classify", "model": model,
                             "masks": [protocol.mask_to_json(m) for m in masks],
                             "options": dict(options or {})})

    def _submit(self, body: dict) -> str:
        if body["model"] is None:
            del body["model"]
        return self.request("POST", "/v1/jobs", body=body)[1]["job_id"]

    def job(self, job_id: str, wait: float = 0.0) -> dict:
        """The job's state; `wait` > 0 holds the answer until it finishes (at most that long)."""
        path = f"/v1/jobs/{job_id}" + (f"?wait={wait:g}" if wait > 0 else "")
        return self.request("GET", path, timeout=self._timeout + wait)[1]

    def cancel(self, job_id: str) -> dict:
        return self.request("DELETE", f"/v1/jobs/{job_id}")[1]

    def wait(self, job_id: str, timeout: float | None = None, poll_s: float = 10.0) -> dict:
        """The finished job (done, failed or cancelled); ServerError(0) after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = poll_s if deadline is None else min(poll_s, deadline - time.monotonic())
            job = self.job(job_id, wait=max(left, 0.0))
            if job["state"] in FINISHED:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise ServerError(0, f"the job has not finished within {timeout:g} s")

    def run(self, job_id: str, timeout: float | None = None) -> list[NodeResult]:
        """Wait for a job and decode its results; ServerError when it failed or was cancelled."""
        job = self.wait(job_id, timeout)
        if job["state"] != "done":
            raise ServerError(409, job.get("error") or f"the job was {job['state']}")
        return [protocol.result_from_json(r) for r in job["results"]]

    def predict(self, volume_id: str, seeds, model: str | None = None, options=None,
                timeout: float | None = None) -> list[NodeResult]:
        return self.run(self.submit_predict(volume_id, seeds, model, options), timeout)

    def classify(self, volume_id: str, masks: list[NodeResult], model: str | None = None,
                 options=None, timeout: float | None = None) -> list[NodeResult]:
        return self.run(self.submit_classify(volume_id, masks, model, options), timeout)
