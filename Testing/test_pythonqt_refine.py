"""The refine request loop inside a real PythonQt (Slicer's own PythonQt revision, Qt's event loop in
C++, the GIL held while Qt idles): pythonqt_refine_scenario.py, run by ../shared/tools/pythonqt's
run_host.sh with this interpreter's site-packages (slicer-core's MRML), the module folder and
Testing/ on its path. Skipped where that host is not built (build.sh, about 6 minutes) or embeds
another Python than this one."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from slicer_harness import import_slicer_or_skip

TESTING = Path(__file__).resolve().parent
ROOT = TESTING.parent
TOOLS = Path(os.environ.get("LYMPHNODE_PYTHONQT_TOOLS", ROOT.parent / "shared" / "tools" / "pythonqt"))
HOST_HOME = Path(os.environ.get("PYTHONQT_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                 / "lymphnode-pythonqt")


def test_refining_a_node_in_a_real_pythonqt_through_qt_network_and_a_qprocess_server():
    import_slicer_or_skip()
    run_host = TOOLS / "run_host.sh"
    if not run_host.is_file():
        pytest.skip(f"no PythonQt host tools at {TOOLS}")
    if not (HOST_HOME / "host" / "slicer_host").is_file():
        pytest.skip(f"the PythonQt host is not built: run {TOOLS / 'build.sh'} (about 6 minutes)")
    embedded = Path((HOST_HOME / "pythonhome").read_text().strip()).resolve()
    if embedded != Path(sys.base_prefix).resolve():
        pytest.skip(f"the PythonQt host embeds the Python of {embedded}, these tests run {sys.base_prefix}")
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                           str(ROOT / "LymphNodeMTL"), str(TESTING)])
    command = [str(run_host), "--timeout", "900"]
    for path in paths:
        command += ["--path", path]
    # the host's PythonSlicer (the local server's interpreter, as in Slicer's bin/) runs this one
    environment = dict(os.environ, PYTHONSLICER_PYTHON=sys.executable)
    out = subprocess.run([*command, str(TESTING / "pythonqt_refine_scenario.py")], capture_output=True,
                         text=True, timeout=960, env=environment)
    report = "\n".join(line for line in (out.stdout + out.stderr).splitlines() if "ERR|" not in line
                       and "WARN|" not in line)
    print(report)
    assert out.returncode == 0 and "pythonqt refine scenario: ok" in out.stdout, report[-4000:]
