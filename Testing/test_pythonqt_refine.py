"""The refine request loop inside a real PythonQt (Slicer's own PythonQt revision, Qt's event loop in
C++, the GIL held while Qt idles): pythonqt_refine_scenario.py run by pythonqt_host. Skipped, with
the reason, where that host is not there."""

from pythonqt_host import run_scenario
from slicer_harness import import_slicer_or_skip


def test_refining_a_node_in_a_real_pythonqt_through_qt_network_and_a_qprocess_server():
    import_slicer_or_skip()
    assert "pythonqt refine scenario: ok" in run_scenario("pythonqt_refine_scenario.py", 900)
