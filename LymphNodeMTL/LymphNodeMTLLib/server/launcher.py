"""Start `lymphnode-mtl serve` as a child process and learn its URL; stop it again.

For Python callers outside Slicer (tests, benchmarks, scripts); the Slicer module does the same
with QProcess so that nothing blocks its main thread. The child prints exactly one line
`listening on URL` on stdout once its engines are loaded and its socket is bound.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

LIB_PARENT = Path(__file__).resolve().parents[2]  # the folder holding LymphNodeMTLLib


class ServerProcess:
    """A running server child process; `url` is None when it exited before listening."""

    def __init__(self, proc: subprocess.Popen, url: str | None):
        self.proc, self.url = proc, url

    def stop(self, timeout: float = 20.0) -> int:
        """Terminate (SIGTERM: uvicorn shuts down cleanly), kill if it does not go; the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        if self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_server(args=(), stderr=None, env=None, python: str | None = None,
                 timeout: float = 300.0) -> ServerProcess:
    """Run `python -m LymphNodeMTLLib.commands.cli serve ARGS` and wait for its URL line.

    Args:
        args: serve options, e.g. ["--port", "0", "--device", "cpu"].
        stderr: where the server's log goes (a file object; None inherits ours).
        env: extra environment variables; this Lib is put first on PYTHONPATH.
        python: interpreter to run (default: this one).
        timeout: seconds to wait for the URL (engine loading included).

    Raises:
        TimeoutError: no URL line in time (the child is stopped).
    """
    paths = [str(LIB_PARENT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    proc = subprocess.Popen([python or sys.executable, "-m", "LymphNodeMTLLib.commands.cli", "serve", *args],
                            stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
                            text=True, env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        ServerProcess(proc, None).stop()
        raise TimeoutError(f"the server printed no URL within {timeout:g} s") from None
    if not line.startswith("listening on "):
        proc.wait(timeout=60)
        return ServerProcess(proc, None)
    return ServerProcess(proc, line.split()[-1])
