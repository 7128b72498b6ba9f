"""The module's transports to the inference server, and one job that waits for its server first.

The job's steps (health, CT upload, submit, poll, cancel, and the line every failure ends with) are
the Lib's (LymphNodeMTLLib/server/job_steps.py); this file only carries their requests. Inside Slicer
that is Qt's QNetworkAccessManager, whose replies arrive through the event loop while a QTimer ticks
the job (no Python thread: PythonQt holds the GIL while Slicer idles); in tests and scripts without
Qt the Lib's blocking stdlib client stands behind the same interface. Nothing is applied here.
"""

import json

from LymphNodeMTLLib.server.client import InferenceClient
from LymphNodeMTLLib.server.job_steps import (
    CANCELLED,
    FAILED,
    FINISHED,
    REQUEST_TIMEOUT_S,
    FailureAdvice,
    RemoteJob,
    Reply,
    Request,
)

STARTING = "starting"  # before the first step: a local server may still be starting
# What the module's failure lines tell the user to do.
MODULE_ADVICE = FailureAdvice(client="this module", token="set the server's token in the module's Advanced settings",
                              retry="press Apply again", update="update the server or the extension")


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
        reply = client.send(Request(method, path, body, dict(headers or {}), timeout))
        if onReply is not None:
            onReply(reply)
        return None

    def abort(self, handle) -> None:
        """Nothing is ever in flight."""


class _PendingReply:
    """One request on its way: the reply, the body it sends, its deadline timer, who is told."""

    def __init__(self, reply, data, timer, onReply):
        self.reply, self.data, self.timer, self.onReply = reply, data, timer, onReply
        self.settled = False  # answered, timed out or aborted: the reply's finished() is then ignored


class QtTransport:
    """QNetworkAccessManager: requests leave at once, replies call onReply from the event loop.

    Every request has a deadline, a single-shot QTimer (the QNetworkRequest.setTransferTimeout of
    Qt 5.15 is missing from the PythonQt wrappers Slicer ships): when it fires first, the request is
    aborted and onReply gets a Reply with timed_out set. An aborted request (cancel) calls nothing:
    Qt 5.15 emits finished() inside abort(), and that reply must not reach the job."""

    def __init__(self):
        import qt

        self._qt = qt
        self._manager = qt.QNetworkAccessManager()
        self._pending = {}  # id(reply) -> _PendingReply, until it is settled

    def send(self, baseUrl, method, path, headers=None, body=None, onReply=None, timeout=REQUEST_TIMEOUT_S):
        qt = self._qt
        request = qt.QNetworkRequest(qt.QUrl(baseUrl + path))
        for key, value in (headers or {}).items():
            request.setRawHeader(qt.QByteArray(key.encode("latin-1")), qt.QByteArray(str(value).encode("latin-1")))
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
        timer = qt.QTimer()
        timer.setSingleShot(True)
        pending = self._pending[id(reply)] = _PendingReply(reply, data, timer, onReply)
        # The timer's slot names the request by key, not by `pending`: a cycle through Qt's
        # connection would keep the timer and the body (a whole CT) alive after the request.
        timer.connect("timeout()", lambda key=id(reply): self._timedOut(key, timeout))
        reply.connect("finished()", lambda: self._finished(pending))  # freed with the reply (deleteLater)
        timer.start(max(1, int(timeout * 1000)))
        return reply

    def inFlight(self) -> int:
        """Requests sent and not yet settled."""
        return len(self._pending)

    def _settle(self, pending) -> bool:
        """Mark the request settled; False when it already was."""
        if pending.settled:
            return False
        pending.settled = True
        pending.timer.stop()  # freed with `pending` once the reply is deleted, not inside its own signal
        pending.data = None
        self._pending.pop(id(pending.reply), None)
        return True

    def _finished(self, pending) -> None:
        reply = pending.reply
        if not self._settle(pending):
            reply.deleteLater()  # aborted or timed out: its answer was given already, or is unwanted
            return
        qt = self._qt
        status = reply.attribute(qt.QNetworkRequest.HttpStatusCodeAttribute)
        raw = reply.readAll() if reply.isOpen() else qt.QByteArray()
        body = bytes(raw.data()) if hasattr(raw, "data") else bytes(raw)
        error = "" if reply.error() == qt.QNetworkReply.NoError else str(reply.errorString())
        reply.deleteLater()
        if pending.onReply is not None:
            pending.onReply(Reply(int(status) if status else 0, _parseJson(body), error))

    def _timedOut(self, key, timeout) -> None:
        pending = self._pending.get(key)
        if pending is None or not self._settle(pending):
            return
        pending.reply.abort()  # its finished() now finds it settled
        if pending.onReply is not None:
            pending.onReply(Reply(0, None, f"no answer within {timeout:g} s", timed_out=True))

    def abort(self, handle) -> None:
        pending = self._pending.get(id(handle)) if handle is not None else None
        if pending is not None and self._settle(pending):
            handle.abort()


def _parseJson(body: bytes):
    try:
        return json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        return None


class ServerConnection:
    """Where the server is and how to talk to it. `describe` names it in messages."""

    def __init__(self, baseUrl: str, token: str = "", transport=None, describe: str = ""):
        self.baseUrl = baseUrl.rstrip("/")
        self.token = token or ""
        self.transport = transport or BlockingTransport()
        self.describe = describe or f"the inference server at {self.baseUrl}"

    def send(self, request: Request, onReply):
        """One request, with the token; onReply(Reply) now or later; returns the transport's handle."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        headers.update(request.headers)
        return self.transport.send(self.baseUrl, request.method, request.path, headers, request.body, onReply,
                                   request.timeout or REQUEST_TIMEOUT_S)

    def abort(self, handle) -> None:
        self.transport.abort(handle)


class ServerJob:
    """One job for the module: it waits for its server (a local one may still be starting), then
    runs the Lib's steps over the connection, one reply per tick; no MRML here.

    connect() -> ServerConnection or None while the server is still starting (raise to fail);
    job: the POST /v1/jobs body (job_steps.predict_job, classify_job); volume: a VolumePayload.
    After `finished`: `results` (NodeResults) when state is DONE, else `error` (FAILED) or nothing
    (CANCELLED).
    """

    def __init__(self, connect, volume, job: dict, unreachable=None, requestTimeoutS=REQUEST_TIMEOUT_S):
        self._connect = connect
        self._requestTimeoutS = requestTimeoutS
        self._unreachable = unreachable  # () -> a line about a server that stopped answering
        self._volume, self._job = volume, job
        self.remote = None  # the Lib's RemoteJob, once the server is there
        self._ended = None  # (state, error) when the job ended before it reached its server

    @property
    def state(self) -> str:
        if self.remote is not None:
            return self.remote.state
        return self._ended[0] if self._ended else STARTING

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def error(self):
        return self.remote.error if self.remote is not None else (self._ended or (None, None))[1]

    jobId = property(lambda self: self.remote.job_id if self.remote else None)
    results = property(lambda self: self.remote.results if self.remote else None)
    progress = property(lambda self: self.remote.progress if self.remote else ("", 0, 0))
    health = property(lambda self: self.remote.health if self.remote else {})

    def tick(self) -> None:
        """Connect while the server starts, then advance the job's steps."""
        if self.finished:
            return
        if self.remote is None:
            try:
                connection = self._connect()
            except Exception as error:  # a server that cannot start: say why, end the job
                self._ended = (FAILED, str(error))
                return
            if connection is None:
                return
            self.remote = RemoteJob(connection.send, self._job, self._volume, abort=connection.abort,
                                    describe=connection.describe, advice=MODULE_ADVICE,
                                    request_timeout_s=self._requestTimeoutS, unreachable=self._unreachable)
        self.remote.tick()

    def cancel(self) -> None:
        """Stop now: no result of this job will be given out; the server job is deleted."""
        if self.remote is not None:
            self.remote.cancel()
        elif not self.finished:
            self._ended = (CANCELLED, None)
