"""Runs a scenario script inside the real PythonQt host of ../shared/tools/pythonqt (3D Slicer's own
PythonQt revision, Qt's event loop in C++, PythonQt's thread support off: the main thread holds the
GIL while Qt idles), with this interpreter's site-packages (slicer-core's MRML), the module folder
and Testing/ on its path. Where the host's tools are absent (a clone without ../shared), not built,
or built for another Python, the calling test skips with one line saying why."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

TESTING = Path(__file__).resolve().parent
ROOT = TESTING.parent
TOOLS = Path(os.environ.get("LYMPHNODE_PYTHONQT_TOOLS", ROOT.parent / "shared" / "tools" / "pythonqt"))
HOST_HOME = Path(os.environ.get("PYTHONQT_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                 / "lymphnode-pythonqt")


def host_or_skip() -> Path:
    """run_host.sh, or skip the calling test with the reason."""
    run_host = TOOLS / "run_host.sh"
    if not run_host.is_file():
        pytest.skip(f"no PythonQt host tools at {TOOLS} (they come with ../shared)")
    if not (HOST_HOME / "host" / "slicer_host").is_file():
        pytest.skip(f"the PythonQt host is not built: run {TOOLS / 'build.sh'} (about 6 minutes; .ci/run does)")
    embedded = Path((HOST_HOME / "pythonhome").read_text().strip()).resolve()
    if embedded != Path(sys.base_prefix).resolve():
        pytest.skip(f"the PythonQt host embeds the Python of {embedded}, these tests run {sys.base_prefix}")
    return run_host


def run_scenario(script: str, timeout_s: float, *args: str) -> str:
    """Run Testing/<script> in the host; all it printed, stdout and stderr (Qt's own warnings too).
    Fails the calling test with that output (the offscreen platform's ERR/WARN lines left out)
    unless the script quit with 0."""
    run_host = host_or_skip()
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                           str(ROOT / "LymphNodeMTL"), str(TESTING)])
    command = [str(run_host), "--timeout", str(int(timeout_s))]
    for path in paths:
        command += ["--path", path]
    # the host's PythonSlicer (the local server's interpreter, as in Slicer's bin/) runs this one
    environment = dict(os.environ, PYTHONSLICER_PYTHON=sys.executable)
    out = subprocess.run([*command, str(TESTING / script), *args], capture_output=True, text=True,
                         timeout=timeout_s + 60, env=environment)
    report = "\n".join(line for line in (out.stdout + out.stderr).splitlines()
                       if "ERR|" not in line and "WARN|" not in line)
    print(report)
    assert out.returncode == 0, f"{script} exited with {out.returncode}:\n{report[-6000:]}"
    return out.stdout + out.stderr
