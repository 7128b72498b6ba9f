"""Write a run's files into a folder all or nothing, under a lock, and never remove a file the run
did not create. `atomic_output` does the same for one file.

    with OutputFolder(out_dir, ["nodes.csv", "run.json"], overwrite=False) as out:
        write_csv(out.staging / "nodes.csv")      # everything goes into a hidden staging folder
        ...
        out.publish()                             # then swaps in, all files or none

- Lock: one writer per folder (a lock file held with filelock); a second run is refused with one
  line instead of both writing.
- Staging: files are written into a hidden folder inside the output folder (same file system, so
  the swap is a rename). Any error, Ctrl-C, SIGTERM or SIGHUP removes it; a folder this run created
  and left empty is removed too.
- Publish: the files it replaces are moved aside first; if any move fails, the new files are moved
  back out and the old ones back in, so the folder holds either the old set or the new set. SIGINT,
  SIGTERM and SIGHUP wait while the swap runs, and while the staging folder and the lock are
  removed; a second SIGTERM or SIGHUP during a run's cleanup is ignored.
- Nothing else in the folder is touched. The run record (run.json) lists the files a run wrote;
  with `overwrite`, an earlier run's listed files that this run does not write are removed with
  the swap (they would describe other results), and without it they refuse the run. A file of
  such a name that no earlier record lists is not ours: it stays, with a warning.
- OS errors (read-only folder, full disk, name too long, dangling symbolic link) are one line
  naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import uuid
from pathlib import Path

from ..core.errors import InputError
from .run_record import RECORD_NAME

STAGING_PREFIX = ".lymphnode-mtl-staging-"
LOCK_NAME = ".lymphnode-mtl.lock"
# Signals that end a run from outside: a scheduler's time limit (TERM), a closed terminal (HUP).
_TERMINATING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
_DEFERRED = (signal.SIGINT, *_TERMINATING)


class TerminatedBySignal(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived; raised like Ctrl-C so that cleanup code runs."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum, _frame):
    # once: a second SIGTERM (a scheduler's, a parent's) while the first one's cleanup runs must not
    # cut that cleanup short; cleanup_on_signals puts the handlers back when its block ends
    for other in _TERMINATING:
        signal.signal(other, signal.SIG_IGN)
    raise TerminatedBySignal(signum)


@contextlib.contextmanager
def cleanup_on_signals():
    """Within the block, SIGTERM and SIGHUP raise TerminatedBySignal (as SIGINT raises
    KeyboardInterrupt), so `finally` blocks and context managers remove temporary files. Only the
    main thread can install handlers; elsewhere (a server worker, Slicer) the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    try:
        for signum in _TERMINATING:
            previous[signum] = signal.signal(signum, _raise_terminated)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT, SIGTERM and SIGHUP back during the block; they arrive right after it, to the
    handlers in place before. Python runs signal handlers in the main thread whichever thread the
    signal reached, so masking the main thread alone would not hold them back where other threads
    run (torch's, a parent watch): for the block, handlers that only note the signal. Elsewhere
    than the main thread no handler interrupts this thread's code anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {}
    try:
        for signum in _DEFERRED:
            previous[signum] = signal.signal(signum, lambda number, _frame: pending.append(number))
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if pending:
            signal.raise_signal(pending[0])  # now, to the handler that was in place


def os_error_line(error: OSError, path, what: str = "write") -> str:
    """One line for an OS error: what failed, on which path, why, and what to do."""
    where = error.filename or path
    reason = error.strerror or str(error) or type(error).__name__
    hints = {
        errno.ENOSPC: "free disk space or choose another folder",
        errno.EROFS: "choose a writable folder",
        errno.EACCES: "choose a folder you may write to",
        errno.EPERM: "choose a folder you may write to",
        errno.ENAMETOOLONG: "choose a shorter path",
        errno.EDQUOT: "free space in your quota or choose another folder",
    }
    hint = hints.get(error.errno, "check the path and its permissions")
    return f"cannot {what} {where}: {reason}; {hint}"


def check_folder_path(folder: Path, option: str = "--out") -> None:
    """Refuse a path that cannot be an output folder: a file, a dangling symbolic link, a name the
    file system cannot hold."""
    for part in folder.absolute().parts:  # first: stat() itself fails on such a name
        if len(os.fsencode(part)) > 255:
            raise InputError(f"{option} {folder}: the name {part[:40]}... is longer than 255 bytes; "
                             "choose a shorter path")
    if folder.is_symlink() and not folder.exists():
        raise InputError(f"{option} {folder} is a symbolic link to {os.readlink(folder)}, which does "
                         "not exist; create its target or choose another folder")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} {folder} is a file, not a folder; choose a folder path")


class FolderLock:
    """A lock on an output folder: two runs never write into one folder at once."""

    def __init__(self, folder: Path, option: str = "--out"):
        self.folder, self.option = Path(folder), option
        self._lock = None

    def acquire(self) -> None:
        import filelock

        self._lock = filelock.FileLock(str(self.folder / LOCK_NAME), timeout=0)
        try:
            self._lock.acquire()
        except filelock.Timeout:
            self._lock = None
            raise InputError(f"another lymphnode-mtl run is writing into {self.folder}; wait for it "
                             f"to finish or choose another {self.option}") from None
        except OSError as e:
            self._lock = None
            raise InputError(os_error_line(e, self.folder)) from None

    def release(self) -> None:
        if self._lock is None:
            return
        # Unlink while still holding it: a run that opened the old file sees it unlinked and
        # retries on a fresh one (filelock checks), so the folder keeps no lock file.
        with contextlib.suppress(OSError):
            os.unlink(self.folder / LOCK_NAME)
        self._lock.release()
        self._lock = None


class OutputFolder:
    """A run's output folder: lock, staging folder, all-or-nothing publish (see module doc).

    Args:
        folder: the output folder (created, with its parents, when missing).
        names: the files (or folders) this run writes, directly in `folder`.
        overwrite: replace files of an earlier run; without it, any of `names` or `related`
            already in `folder` refuses the run.
        related: names an earlier run may have written that this run does not (e.g. an optional
            report). Where the folder's run.json lists them as that run's outputs they are
            refused without `overwrite` and removed with it; otherwise they are left in place.
        option: how messages name the folder ("--out").
        warn: receives each warning line.
    """

    def __init__(self, folder, names, overwrite: bool = False, related=(), option: str = "--out",
                 warn=None):
        self.folder = Path(folder)
        self.names = tuple(names)
        self.related = tuple(n for n in related if n not in self.names)
        self.overwrite = overwrite
        self.option = option
        self.warn = warn or (lambda line: print(f"lymphnode-mtl: warning: {line}", file=sys.stderr))
        self.staging: Path | None = None
        self.published = False
        self._lock = FolderLock(self.folder, option)
        self._created: list[Path] = []

    # --- checks ---------------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse an unusable folder or (without overwrite) earlier results; writes nothing."""
        check_folder_path(self.folder, self.option)
        existing = [n for n in self.names + self._earlier_outputs() if os.path.lexists(self.folder / n)]
        if existing and not self.overwrite:
            raise InputError(
                f"{self.folder} already holds {', '.join(existing)} (possibly edited masks); "
                f"choose another {self.option} or pass --overwrite"
            )

    def _earlier_outputs(self) -> tuple[str, ...]:
        """The related names the folder's run record lists as written by an earlier run."""
        try:
            listed = json.loads((self.folder / RECORD_NAME).read_text()).get("outputs", [])
        except (OSError, ValueError, AttributeError):
            return ()
        return tuple(n for n in self.related if isinstance(listed, list) and n in listed)

    # --- context ----------------------------------------------------------------------------------
    def __enter__(self) -> "OutputFolder":
        self.check()
        self._make_folder()
        try:
            self._lock.acquire()
            self.check()  # again under the lock: another run may have published meanwhile
            self._remove_dead_staging()
            self.staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.folder))
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._close()
        if isinstance(exc, OSError):
            raise InputError(os_error_line(exc, self.folder)) from None
        if isinstance(exc, RuntimeError) and "ImageFileWriter" in str(exc):
            # SimpleITK reports a failed write (full disk, ...) as a multi-line RuntimeError
            raise InputError(f"cannot write an image into {self.folder}: the writer failed (disk "
                             "full or folder not writable?); free disk space or choose another "
                             f"{self.option}") from None
        return False

    def _make_folder(self) -> None:
        missing = []
        parent = self.folder
        while not parent.exists() and not parent.is_symlink():
            missing.append(parent)
            parent = parent.parent
        try:
            for path in reversed(missing):
                path.mkdir()
                self._created.append(path)
        except OSError as e:
            self._remove_created_folders()
            raise InputError(os_error_line(e, self.folder, "create folder")) from None

    def _remove_dead_staging(self) -> None:
        """Staging folders of a run that was killed (SIGKILL, power loss): under our lock no other
        run can be using them, and only this tool creates names with this prefix."""
        for entry in self.folder.iterdir():
            if entry.name.startswith(STAGING_PREFIX) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)

    def _close(self) -> None:
        # signals wait until the staging folder and the lock are gone: a SIGTERM landing here
        # (a scheduler, a cohort worker whose parent died) must not leave either behind
        with _signals_deferred():
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
                self.staging = None
            self._lock.release()
            if not self.published:
                self._remove_created_folders()

    def _remove_created_folders(self) -> None:
        for path in reversed(self._created):
            with contextlib.suppress(OSError):
                path.rmdir()  # only when empty: never a file this run did not write
        self._created = []

    # --- publish ----------------------------------------------------------------------------------
    def publish(self, names=None) -> list[Path]:
        """Move every staged file into the folder at once; all or nothing. Returns the paths.

        names: what to publish when the writer chose the names itself (a data set's case
        folders); default: the names given at construction, all of which must be staged."""
        if self.staging is None:
            raise RuntimeError("publish() outside the `with` block")
        names = tuple(names) if names is not None else self.names
        staged = [n for n in names if os.path.lexists(self.staging / n)]
        missing = sorted(set(names) - set(staged))
        if missing:
            raise RuntimeError(f"not written: {', '.join(missing)}")
        superseded = [n for n in self._earlier_outputs() if os.path.lexists(self.folder / n)]
        aside = self.staging / ".replaced"
        aside.mkdir()
        moved_old, moved_new = [], []
        with _signals_deferred():
            try:
                for name in staged + superseded:
                    if os.path.lexists(self.folder / name):
                        os.replace(self.folder / name, aside / name)
                        moved_old.append(name)
                for name in staged:
                    os.replace(self.staging / name, self.folder / name)
                    moved_new.append(name)
                self.published = True  # before the deferred signals arrive
            except BaseException:
                for name in moved_new:
                    with contextlib.suppress(OSError):
                        os.replace(self.folder / name, self.staging / name)
                for name in moved_old:
                    with contextlib.suppress(OSError):
                        os.replace(aside / name, self.folder / name)
                raise
        kept = [n for n in self.related if os.path.lexists(self.folder / n)]
        if kept:
            self.warn(f"{', '.join(kept)} in {self.folder} {'was' if len(kept) == 1 else 'were'} "
                      "not written by this run and left as is; it does not describe these results")
        return [self.folder / n for n in staged]


@contextlib.contextmanager
def atomic_output(path, suffix: str = ""):
    """Yield a temporary path beside `path`; move it over `path` on success, delete it on error.

    The temporary file is created with mode 0666 minus the umask, as a plain open() would, so the
    final file's permissions are the usual ones. `suffix` lets writers that choose a format by
    extension (SimpleITK) see the right one.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{suffix}")
    os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
