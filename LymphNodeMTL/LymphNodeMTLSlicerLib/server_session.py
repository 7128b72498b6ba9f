"""Where the module's inference server is, and its life cycle.

"local" (the default) is a `lymphnode-mtl serve` process on this computer (server_process.py),
started by the first job, kept warm between jobs, started again when it died or when the device or
model folder changes; anything else is a shared server's address, with its token. Jobs talk to it
over Qt's network access inside Slicer and over the Lib's blocking client elsewhere; scripts and
tests wait for a job here, ticking it as the widget's timer would.
"""

import time

import slicer

from LymphNodeMTLLib.server import job_steps

from .module_job import JobCancelled, JobFailed
from .server_client import BlockingTransport, QtTransport, ServerConnection, ServerJob
from .server_process import FAILED, READY, LocalServer, sharedLocalServer

LOCAL_SERVER = "local"  # the server setting for a server process on this computer


class ServerSession:
    def __init__(self):
        self.url = LOCAL_SERVER
        self.token = ""
        self.pollIntervalS = 0.1
        self.requestTimeoutS = job_steps.REQUEST_TIMEOUT_S  # each request's deadline (uploads: at least 600 s)
        self.idle = None  # called between ticks while a script waits (default: events + sleep)
        self.transport = None  # QtTransport inside Slicer, BlockingTransport elsewhere

    def setServer(self, url: str, token: str = "") -> None:
        """"local" (a server process on this computer) or a server's address, with its token."""
        self.url = (url or LOCAL_SERVER).strip()
        self.token = token or ""

    @staticmethod
    def insideSlicerApp() -> bool:
        return hasattr(getattr(slicer, "app", None), "processEvents")

    def localServer(self) -> LocalServer:
        return sharedLocalServer(self.insideSlicerApp())

    def job(self, volume, job: dict, modelFolder=None, device="auto") -> ServerJob:
        """A job (job_steps.predict_job, classify_job) on the CT `volume` (a VolumePayload); a local
        server is started when it is not running."""
        if self.transport is None:
            self.transport = QtTransport() if self.insideSlicerApp() else BlockingTransport()
        if self.url != LOCAL_SERVER:
            connection = ServerConnection(self.url, self.token, self.transport)
            return ServerJob(lambda: connection, volume, job, requestTimeoutS=self.requestTimeoutS)
        server = self.localServer()
        server.ensure(device, modelFolder)

        def connect():
            state = server.poll()
            if state == READY:
                return ServerConnection(server.url, server.token, self.transport, "the local inference server")
            if state == FAILED:
                raise RuntimeError(f"{server.error}; press Apply again to retry")
            return None  # still starting

        return ServerJob(connect, volume, job, server.unreachableMessage, self.requestTimeoutS)

    def waitForJob(self, job, timeout=None):
        """Tick a ModuleJob until it ends (scripts, tests, the self-test); its summary, or raise."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            job.tick()
            if job.finished:
                break
            if end is not None and time.monotonic() > end:
                job.cancel()
                raise JobFailed(f"the job did not finish within {timeout:.0f} s; it was cancelled")
            self._idle()
        if job.error:
            raise JobFailed(job.error)
        if job.summary is None:
            raise JobCancelled("cancelled: nothing was changed")
        return job.summary

    def _idle(self) -> None:
        if self.idle is not None:
            self.idle()
            return
        if self.insideSlicerApp():
            slicer.app.processEvents()  # network replies and process output arrive through Qt
        time.sleep(self.pollIntervalS)
