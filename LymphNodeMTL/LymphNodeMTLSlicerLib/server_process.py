"""The local inference server: `lymphnode-mtl serve` started with Slicer's own Python, bound to
loopback, kept warm between runs, stopped when Slicer quits, started again after it died.

Inside Slicer the process is a QProcess (no Python thread reads its output; the main thread polls
it); without Qt (tests, scripts) a subprocess.Popen stands behind the same small interface. The
server prints `listening on http://HOST:PORT` once it accepts requests; its log goes to a file
whose last lines are quoted when it stops.
"""

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LISTENING = re.compile(r"listening on (https?://\S+)")
ACCESS_LINE = re.compile(r"\bINFO\b.*: (GET|HEAD|PUT|POST|DELETE) /")  # the server's access log
STOPPED, STARTING, READY, FAILED = "stopped", "starting", "ready", "failed"
START_TIMEOUT_S = 300.0  # the first start imports torch and loads the model (slow on a cold disk)
MODULE_DIR = Path(__file__).resolve().parents[1]  # holds LymphNodeMTLLib


def slicerPythonExecutable() -> str:
    """Slicer's own Python: PythonSlicer inside the application (sys.executable is the application
    itself there, which must not be started again), else this interpreter."""
    if not hasattr(sys.modules.get("slicer"), "app"):
        return sys.executable
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    for candidate in (shutil.which(name), str(Path(sys.executable).resolve().parent / name)):
        if candidate and Path(candidate).is_file():
            return candidate
    raise RuntimeError(f"cannot find Slicer's {name} next to {sys.executable}: set the inference server "
                       "to a running server's address in the module's Advanced settings")


def serverArguments(device: str = "auto", modelFolder=None, token: str = "") -> list:
    """The command line after the Python executable (the token travels in the environment). With
    --parent-pid the server also stops when Slicer ends without quitting (a crash, a kill)."""
    arguments = ["-m", "LymphNodeMTLLib.commands.cli", "serve", "--host", "127.0.0.1", "--port", "0",
                 "--device", device or "auto", "--parent-pid", str(os.getpid())]
    if modelFolder:
        arguments += ["--model", str(modelFolder)]
    return arguments


class PopenRunner:
    """subprocess.Popen with non-blocking reads of its standard output."""

    def __init__(self):
        self._process = None

    def start(self, program, arguments, environment, logPath) -> None:
        self._log = open(logPath, "ab")
        self._process = subprocess.Popen([program, *arguments], stdout=subprocess.PIPE, stderr=self._log,
                                         stdin=subprocess.DEVNULL, env=environment, cwd=str(MODULE_DIR))
        os.set_blocking(self._process.stdout.fileno(), False)

    def readOutput(self) -> str:
        if self._process is None:
            return ""
        try:
            data = self._process.stdout.read()
        except (BlockingIOError, ValueError):
            data = None
        return (data or b"").decode("utf-8", "replace")

    def isRunning(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def exitCode(self):
        return None if self._process is None else self._process.poll()

    @property
    def pid(self):
        return None if self._process is None else self._process.pid

    def stop(self, graceS: float = 5.0) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(graceS)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(graceS)
        self._process.stdout.close()
        self._log.close()


class QProcessRunner:
    """qt.QProcess: started and read from the main thread; nothing blocks while it starts."""

    def __init__(self):
        import qt

        self._qt = qt
        self._process = None

    def start(self, program, arguments, environment, logPath) -> None:
        qt = self._qt
        self._process = qt.QProcess()
        processEnvironment = qt.QProcessEnvironment()
        for key, value in environment.items():
            processEnvironment.insert(key, value)
        self._process.setProcessEnvironment(processEnvironment)
        self._process.setWorkingDirectory(str(MODULE_DIR))
        self._process.setStandardErrorFile(str(logPath), qt.QIODevice.Append)
        self._process.start(program, list(arguments))

    def readOutput(self) -> str:
        if self._process is None:
            return ""
        raw = self._process.readAllStandardOutput()
        return bytes(raw.data() if hasattr(raw, "data") else raw).decode("utf-8", "replace")

    def isRunning(self) -> bool:
        return self._process is not None and self._process.state() != self._qt.QProcess.NotRunning

    def exitCode(self):
        return None if self._process is None or self.isRunning() else int(self._process.exitCode())

    @property
    def pid(self):
        return None if self._process is None else int(self._process.processId())

    def stop(self, graceS: float = 5.0) -> None:
        if self._process is None or not self.isRunning():
            return
        self._process.terminate()
        if not self._process.waitForFinished(int(graceS * 1000)):
            self._process.kill()
            self._process.waitForFinished(int(graceS * 1000))


class LocalServer:
    """One local server process for one (device, model folder); poll() from the main thread."""

    def __init__(self, runnerFactory=None, python=None):
        self._runnerFactory = runnerFactory or PopenRunner
        self._python = python
        self._runner = None
        self._key = None
        self._output = ""
        self.state = STOPPED
        self.url = None
        self.token = ""
        self.error = None
        self.startedAt = None
        self.logPath = Path(tempfile.gettempdir()) / f"LymphNodeMTL-server-{os.getpid()}.log"

    @property
    def pid(self):
        return self._runner.pid if self._runner is not None else None

    def ensure(self, device="auto", modelFolder=None) -> None:
        """Start the server unless one for this device and model folder runs (or is starting)."""
        key = (device or "auto", str(modelFolder or ""))
        if self._runner is not None and self._key == key and self.state in (STARTING, READY) \
                and self._runner.isRunning():
            return
        self.stop()
        program = self._python or slicerPythonExecutable()
        self._key = key
        self.token = secrets.token_urlsafe(24)  # loopback only, but other local users need not drive it
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(MODULE_DIR)] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p])
        environment["LYMPHNODE_MTL_TOKEN"] = self.token
        environment["PYTHONUNBUFFERED"] = "1"  # the listening line must not wait in a buffer
        self._runner = self._runnerFactory()
        self._output, self.url, self.error = "", None, None
        self.state, self.startedAt = STARTING, time.monotonic()
        self._runner.start(program, serverArguments(device, modelFolder, self.token), environment, self.logPath)

    def poll(self) -> str:
        """Read what the process printed, notice that it listens or that it died; the state."""
        if self._runner is None:
            return self.state
        self._output = (self._output + self._runner.readOutput())[-4000:]
        if self.state == STARTING:
            match = LISTENING.search(self._output)
            if match:
                self.url, self.state = match.group(1).rstrip("/"), READY
            elif time.monotonic() - self.startedAt > START_TIMEOUT_S:
                self._die(f"the local inference server did not start within {START_TIMEOUT_S:.0f} s")
        if self.state in (STARTING, READY) and not self._runner.isRunning():
            self._die(f"the local inference server stopped (exit code {self._runner.exitCode()})")
        return self.state

    def waitUntilReady(self, timeout=START_TIMEOUT_S, idle=None) -> str:
        """Scripts and tests: poll until READY or FAILED (idle() between polls)."""
        end = time.monotonic() + timeout
        while self.poll() == STARTING and time.monotonic() < end:
            (idle or (lambda: time.sleep(0.05)))()
        return self.state

    def isAlive(self) -> bool:
        return self._runner is not None and self._runner.isRunning()

    def unreachableMessage(self):
        """After a request got no answer: why, when the process died (with its last log line); None
        while it seems alive. Never waits: a QProcess learns of its death only in the event loop, so
        the caller asks again on its next ticks (job_steps.RemoteJob does)."""
        if self.poll() == FAILED:
            return f"{self.error}; nothing was changed. Press Apply again to restart it."
        return None

    def _die(self, why: str) -> None:
        self.state, self.url = FAILED, None
        tail = self.logTail()
        self.error = why + (f" (last log line: {tail})" if tail else "") + f"; log: {self.logPath}"

    def logTail(self) -> str:
        """The log's last line that says something about the process (not a request's access line)."""
        try:
            lines = [line.strip() for line in self.logPath.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        lines = [line for line in lines if not ACCESS_LINE.search(line)]
        return lines[-1][:300] if lines else ""

    def stop(self) -> None:
        if self._runner is not None:
            self._runner.stop()
        self._runner, self.url = None, None
        self.state = STOPPED


_shared = None


def sharedLocalServer(insideSlicer: bool) -> LocalServer:
    """The one local server of this Slicer (or Python) process, stopped when the process ends."""
    global _shared
    if _shared is None:
        _shared = LocalServer(QProcessRunner if insideSlicer else PopenRunner)
        if insideSlicer:
            import slicer

            slicer.app.connect("aboutToQuit()", _shared.stop)
        else:
            import atexit

            atexit.register(_shared.stop)
    return _shared
