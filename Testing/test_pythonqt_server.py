"""The module's server jobs inside a real PythonQt (Slicer's own PythonQt revision, Qt's event loop
in C++, the GIL held while Qt idles): pythonqt_server_scenario.py run by pythonqt_host, one host
launch for all its steps (Apply, Follow-up with its two CTs, cancel at five points, a killed server, a server that never answers, a
large CT, the GIL). Skipped, with the reason, where that host is not there."""

from pythonqt_host import run_scenario
from slicer_harness import import_slicer_or_skip


def test_server_jobs_in_a_real_pythonqt_cancel_kill_deadline_and_a_large_ct():
    import_slicer_or_skip()
    output = run_scenario("pythonqt_server_scenario.py", 600)
    assert "pythonqt server scenario: ok" in output
    assert "device not open" not in output  # no read of an aborted reply
