"""The module's side of the inference server API (docs/server-api.md): one job as a small state
machine driven from the main thread, over an asynchronous transport.

No Python thread is involved: inside Slicer the transport is Qt's QNetworkAccessManager, whose
replies arrive through the event loop, and a QTimer calls `ServerJob.tick()` to poll the job; in
tests and scripts without Qt a blocking stdlib transport stands behind the same interface. The
steps: health (API version, token) -> CT already on the server? (HEAD) -> upload it once (PUT) ->
submit the job (POST) -> poll it (GET) -> results; cancel = DELETE. Every failure ends the job with
one line saying what went wrong and what to do; nothing is applied by this file.
"""

import json

from LymphNodeMTLLib.server import protocol
from LymphNodeMTLLib.server.client import InferenceClient, ServerError

# Job states on this side (the server's own states plus the steps before the job exists).
STARTING, CHECKING, UPLOADING, SUBMITTING, POLLING = "starting", "checking", "uploading", "submitting", "polling"
DONE, FAILED, CANCELLED = "done", "failed", "cancelled"
FINISHED_STATES = (DONE, FAILED, CANCELLED)
REQUEST_TIMEOUT_S = 120.0  # the first health answer waits for the model to load
UPLOAD_TIMEOUT_S = 600.0


class Reply:
    """One HTTP answer: status 0 means no answer at all (refused, reset, timed out)."""

    def __init__(self, status: int, payload=None, error: str = ""):
        self.status = int(status or 0)
        self.payload = payload
        self.error = error

    def json(self) -> dict:
        return self.payload if isinstance(self.payload, dict) else {}

    def errorLine(self) -> str:
        """The server's one-line error, else the transport's."""
        text = str(self.json().get("error") or self.error or "no details")
        return " ".join(text.split())


def _parseJson(body: bytes):
    try:
        return json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        return None


class BlockingTransport:
    """The Lib's stdlib client (keep-alive, one per server) for scripts and tests: each send
    completes, and calls onReply, before it returns."""

    def __init__(self):
        self._clients = {}

    def send(self, baseUrl, method, path, headers=None, body=None, onReply=None, timeout=REQUEST_TIMEOUT_S):
        client = self._clients.get(baseUrl)
        if client is None:
            try:
                client = self._clients[baseUrl] = InferenceClient(baseUrl, timeout=timeout)
            except ValueError as error:  # not a server URL
                onReply(Reply(0, None, str(error)))
                return None
        try:
            status, payload = client.request(method, path, body=None if body is None else bytes(body),
                                             headers=headers, timeout=timeout)
            reply = Reply(status, payload)
        except ServerError as error:
            reply = Reply(error.status, {"error": str(error)} if error.status else None, str(error))
        if onReply is not None:
            onReply(reply)
        return None

    def abort(self, handle) -> None:
        """Nothing is ever in flight."""


class QtTransport:
    """QNetworkAccessManager: requests leave at once, replies call onReply from the event loop."""

    def __init__(self):
        import qt

        self._qt = qt
        self._manager = qt.QNetworkAccessManager()
        self._replies = {}  # keeps each reply (and its body) alive until it finished

    def send(self, baseUrl, method, path, headers=None, body=None, onReply=None, timeout=REQUEST_TIMEOUT_S):
        qt = self._qt
        request = qt.QNetworkRequest(qt.QUrl(baseUrl + path))
        for key, value in (headers or {}).items():
            request.setRawHeader(qt.QByteArray(key.encode("latin-1")), qt.QByteArray(str(value).encode("latin-1")))
        if hasattr(request, "setTransferTimeout"):  # Qt >= 5.15
            request.setTransferTimeout(int(timeout * 1000))
        data = qt.QByteArray(bytes(body)) if body is not None else qt.QByteArray()
        # The verbs' own calls: Qt then knows, e.g., that a HEAD answer has no body to wait for.
        if method == "GET":
            reply = self._manager.get(request)
        elif method == "HEAD":
            reply = self._manager.head(request)
        elif method == "DELETE":
            reply = self._manager.deleteResource(request)
        elif method == "PUT":
            reply = self._manager.put(request, data)
        elif method == "POST":
            reply = self._manager.post(request, data)
        else:
            reply = self._manager.sendCustomRequest(request, qt.QByteArray(method.encode("ascii")), data)
        self._replies[id(reply)] = (reply, data)
        reply.connect("finished()", lambda: self._finished(reply, onReply))
        return reply

    def _finished(self, reply, onReply) -> None:
        self._replies.pop(id(reply), None)
        qt = self._qt
        status = reply.attribute(qt.QNetworkRequest.HttpStatusCodeAttribute)
        raw = reply.readAll()
        body = bytes(raw.data()) if hasattr(raw, "data") else bytes(raw)
        error = "" if reply.error() == qt.QNetworkReply.NoError else str(reply.errorString())
        reply.deleteLater()
        if onReply is not None:
            onReply(Reply(int(status) if status else 0, _parseJson(body), error))

    def abort(self, handle) -> None:
        if handle is not None and id(handle) in self._replies:
            handle.abort()


class ServerConnection:
    """Where the server is and how to talk to it. `describe` names it in messages."""

    def __init__(self, baseUrl: str, token: str = "", transport=None, describe: str = ""):
        self.baseUrl = baseUrl.rstrip("/")
        self.token = token or ""
        self.transport = transport or BlockingTransport()
        self.describe = describe or f"the inference server at {self.baseUrl}"

    def headers(self, extra=None) -> dict:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        headers.update(extra or {})
        return headers

    def send(self, method, path, onReply, jsonBody=None, body=None, headers=None, timeout=REQUEST_TIMEOUT_S):
        extra = dict(headers or {})
        if jsonBody is not None:
            body = json.dumps(jsonBody).encode("utf-8")
            extra["Content-Type"] = "application/json"
        return self.transport.send(self.baseUrl, method, path, self.headers(extra), body, onReply, timeout)


class VolumePayload:
    """The CT as the API names and sends it (its content hash is computed once, by the caller)."""

    def __init__(self, image, ijkToRas, volumeId=None):
        self.image = image
        self.ijkToRas = ijkToRas
        self.volumeId = volumeId or protocol.volume_id(image, ijkToRas)


class ServerJob:
    """One predict or classify job, from a main-thread tick to the next; no MRML here.

    connect() -> ServerConnection or None while the server is still starting (raise to fail);
    request: the POST /v1/jobs body without volume_id. After `finished`: `results` (NodeResults)
    when state is DONE, else `error` (FAILED) or nothing (CANCELLED).
    """

    def __init__(self, connect, volume: VolumePayload, request: dict, unreachable=None):
        self._connect = connect
        self._unreachable = unreachable  # () -> a line about a server that stopped answering
        self.volume = volume
        self.request = dict(request, volume_id=volume.volumeId)
        self.connection = None
        self.state = STARTING
        self.progress = ("", 0, 0)  # (stage, done, total)
        self.jobId = None
        self.results = None
        self.error = None
        self.health = {}
        self.uploaded = False
        self._inFlight = None  # the request waiting for its reply (True for a blocking transport)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    # --- driving ---------------------------------------------------------------------------------
    def tick(self) -> None:
        """Advance when nothing is waiting: connect, or poll the job's state."""
        if self.finished or self._inFlight is not None:
            return
        if self.state == STARTING:
            try:
                self.connection = self._connect()
            except Exception as error:  # a server that cannot start: say why, end the job
                self._fail(str(error))
                return
            if self.connection is not None:
                self.state = CHECKING
                self._send("GET", "/v1/health", self._onHealth)
        elif self.state == POLLING:
            self._send("GET", f"/v1/jobs/{self.jobId}", self._onJobState)

    def cancel(self) -> None:
        """Stop now: no result of this job will be given out; the server job is deleted."""
        if self.finished:
            return
        if self._inFlight not in (None, True) and self.state != SUBMITTING:
            self.connection.transport.abort(self._inFlight)
        self.state = CANCELLED
        self._deleteServerJob()

    def _deleteServerJob(self) -> None:
        if self.jobId and self.connection is not None:
            self.connection.send("DELETE", f"/v1/jobs/{self.jobId}", lambda reply: None)

    # --- steps -----------------------------------------------------------------------------------
    def _send(self, method, path, handler, **kwargs) -> None:
        self._inFlight = True  # a blocking transport replies inside send()

        def onReply(reply):
            self._inFlight = None
            handler(reply)

        handle = self.connection.send(method, path, onReply, **kwargs)
        if self._inFlight is True and handle is not None:
            self._inFlight = handle

    def _failed(self, reply, okStatuses) -> bool:
        """End the job when the reply is not one of okStatuses (or the job was cancelled meanwhile)."""
        if self.state == CANCELLED:
            return True
        if reply.status in okStatuses:
            return False
        if reply.status == 0:
            line = (self._unreachable() if self._unreachable else None) or (
                f"{self.connection.describe} stopped answering ({reply.error}); check that it runs "
                "and press Apply again")
        elif reply.status in (401, 403):
            line = (f"{self.connection.describe} refused the request ({reply.status}: {reply.errorLine()}); "
                    "set the server's token in the module's Advanced settings")
        else:
            line = f"{self.connection.describe} answered {reply.status}: {reply.errorLine()}"
        self._fail(line)
        return True

    def _fail(self, line: str) -> None:
        self.state = FAILED
        self.error = line
        self._deleteServerJob()

    def _onHealth(self, reply) -> None:
        if self._failed(reply, (200,)):
            return
        self.health = reply.json()
        if self.health.get("api_version") != protocol.API_VERSION:
            self._fail(f"{self.connection.describe} speaks API version {self.health.get('api_version')}, "
                       f"this module needs {protocol.API_VERSION}; update the server or the extension")
            return
        self._send("HEAD", f"/v1/volumes/{self.volume.volumeId}", self._onVolumeKnown)

    def _onVolumeKnown(self, reply) -> None:
        if reply.status == 404 and self.state != CANCELLED:
            self.state = UPLOADING
            self._send("PUT", f"/v1/volumes/{self.volume.volumeId}", self._onUploaded,
                       body=protocol.volume_bytes(self.volume.image),
                       headers=dict(protocol.volume_headers(self.volume.image, self.volume.ijkToRas),
                                    **{"Content-Type": "application/octet-stream"}),
                       timeout=UPLOAD_TIMEOUT_S)
        elif not self._failed(reply, (200,)):
            self._submit()

    def _onUploaded(self, reply) -> None:
        if not self._failed(reply, (200, 201)):
            self.uploaded = True
            self._submit()

    def _submit(self) -> None:
        self.state = SUBMITTING
        self._send("POST", "/v1/jobs", self._onSubmitted, jsonBody=self.request)

    def _onSubmitted(self, reply) -> None:
        cancelled = self.state == CANCELLED
        if reply.status in (200, 201, 202):
            self.jobId = reply.json().get("job_id")
            if cancelled:  # cancelled while the job was being created: delete it now
                self._deleteServerJob()
                return
        if not self._failed(reply, (200, 201, 202)):
            self.state = POLLING

    def _onJobState(self, reply) -> None:
        if self._failed(reply, (200,)):
            return
        payload = reply.json()
        progress = payload.get("progress") or {}
        self.progress = (str(progress.get("stage", "")), int(progress.get("done") or 0),
                         int(progress.get("total") or 0))
        state = payload.get("state")
        if state == DONE:
            try:
                self.results = [protocol.result_from_json(r) for r in payload.get("results") or []]
            except Exception as error:  # a reply this module cannot read: no partial results
                self._fail(f"{self.connection.describe} sent results this module cannot read ({error})")
                return
            self.state = DONE
        elif state == FAILED:
            self._fail(f"{self.connection.describe}: the job failed: {payload.get('error') or 'no details'}")
        elif state == CANCELLED:
            self.state = CANCELLED
