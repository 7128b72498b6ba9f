"""A process that ends with its parent: the inference server started by Slicer (`serve
--parent-pid`) and a cohort's worker processes, so neither holds a GPU or a case folder after the
process that started it has gone (crashed, killed)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time


def process_alive(pid: int) -> bool:
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x00100000, False, pid)  # SYNCHRONIZE
        if not handle:
            return False
        try:
            return kernel32.WaitForSingleObject(handle, 0) != 0  # 0: WAIT_OBJECT_0, it has ended
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_with_parent(pid: int, every_s: float = 1.0, direct: bool = False) -> None:
    """A watcher thread: SIGTERM to ourselves (so the usual cleanup runs: a clean uvicorn shutdown,
    a case's staging folder removed) once `pid` has ended. direct: `pid` is this process's own
    parent; being handed to another parent then counts as its end too (a killed parent that
    nobody has reaped yet still answers as a process)."""

    def parent_alive() -> bool:
        if direct and os.name != "nt" and os.getppid() != pid:
            return False
        return process_alive(pid)

    def watch():
        while parent_alive():
            time.sleep(every_s)
        logging.getLogger("lymphnode_mtl").info("parent process ended: stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
