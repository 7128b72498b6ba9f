"""The module's Widget driving real jobs on a real local server, with stand-in Qt widgets and a
QTimer the test fires itself (as Qt's event loop would every 100 ms): Apply turns into Cancel while
a job runs, results are shown on the finishing tick, Cancel changes nothing, a refused token is
one error line, and the server settings are saved in QSettings."""

import contextlib
import time
import types

import numpy as np
import pytest
from slicer_harness import import_slicer_or_skip

import_slicer_or_skip()
import slicer_module_stubs  # noqa: E402
from LymphNodeMTLLib.phantoms.case_generator import generate_phantom_case  # noqa: E402

lnmtl = slicer_module_stubs.import_module_file()
from LymphNodeMTLSlicerLib import server_settings  # noqa: E402


class Field(types.SimpleNamespace):
    """A stand-in widget: attributes are its Qt properties; calls are recorded."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args: self.__dict__.setdefault("calls", []).append((name, args))


@pytest.fixture
def widget(mrml_scene, monkeypatch):
    import slicer

    errors = []
    monkeypatch.setattr(lnmtl.qt.QSettings, "store", {})  # this test's own settings file
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay",
                        lambda *a, **k: contextlib.nullcontext(), raising=False)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **k: None, raising=False)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **k: errors.append(text), raising=False)
    phantom = generate_phantom_case(np.random.default_rng(2), 2, spacing=(1.0, 1.0, 2.0),
                                    direction=np.eye(3), field_of_view_mm=(96.0, 96.0, 64.0))
    widget = lnmtl.LymphNodeMTLWidget(None)
    widget.logic = lnmtl.LymphNodeMTLLogic()
    widget.ui = types.SimpleNamespace(
        applyButton=Field(text="Apply", enabled=False, toolTip=""),
        reclassifyButton=Field(enabled=False), exportButton=Field(enabled=False),
        statusLabel=Field(text=""), progressBar=Field(value=0), show3DCheckBox=Field(checked=False),
        serverUrlLineEdit=Field(text="local"), serverTokenLineEdit=Field(text=""),
        rememberTokenCheckBox=Field(checked=False),
        resultsTableView=Field())
    widget._pollTimer = lnmtl.qt.QTimer()
    widget._pollTimer.connect("timeout()", widget._pollJob)
    p = widget._parameterNode = lnmtl.LymphNodeMTLParameterNode(None)
    p.inputVolume = slicer.util.addVolumeFromArray(np.round(phantom.image).astype(np.int16),
                                                   phantom.geometry.ijk_to_ras, name="CT")
    p.seeds = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Seeds")
    for node in phantom.nodes:
        p.seeds.AddControlPoint(*node.seed_ras, node.node_id)
    p.device = "cpu"
    widget.errors = errors
    return widget


def _run_timer(widget, until=lambda w: w._job is None, timeout=180.0):
    end = time.monotonic() + timeout
    while not until(widget):
        assert time.monotonic() < end, "the job did not end"
        widget._pollTimer.fire()
        time.sleep(0.1)


def test_apply_runs_a_job_from_timer_ticks_and_shows_its_results(widget, mrml_scene):
    widget.onApplyButton()
    assert widget._job is not None and widget._pollTimer.isActive()
    assert widget.ui.applyButton.text == "Cancel" and not widget.ui.reclassifyButton.enabled
    _run_timer(widget)
    assert not widget._pollTimer.isActive() and widget.ui.applyButton.text == "Apply"
    assert widget.ui.statusLabel.text == "2 node(s) segmented."
    p = widget._parameterNode
    assert p.outputSegmentation is not None and p.outputTable.GetNumberOfRows() == 2
    assert widget.errors == []
    settings = lnmtl.qt.QSettings()
    assert settings.value(server_settings.SETTINGS_SERVER_URL) == "local"
    assert settings.value("LymphNodeMTL/device") == "cpu"


def test_cancel_while_running_changes_nothing(widget, mrml_scene):
    widget.onApplyButton()
    _run_timer(widget, until=lambda w: w._job.serverJob.state == "polling")
    widget.onApplyButton()  # the button says Cancel now
    assert widget._job is None and widget.ui.statusLabel.text == "Cancelled: nothing was changed."
    assert widget.ui.applyButton.text == "Apply"
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert widget._parameterNode.outputSegmentation is None


def test_a_refused_token_is_one_error_line_and_nothing_is_applied(widget, mrml_scene):
    server = widget.logic.localServer()
    server.ensure("cpu", None)
    assert server.waitUntilReady() == "ready"
    widget.ui.serverUrlLineEdit.text = server.url
    widget.ui.serverTokenLineEdit.text = "not-the-token"
    widget.onApplyButton()
    _run_timer(widget)
    assert widget.ui.statusLabel.text == "Failed: nothing was changed."
    (error,) = widget.errors
    assert "refused" in error and "token" in error and "\n" not in error
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    # the token stays in memory; the plain-text settings get it only when "remember" is ticked
    assert widget.logic.server.token == "not-the-token"
    assert lnmtl.qt.QSettings().value(server_settings.SETTINGS_SERVER_TOKEN) is None
    widget.ui.rememberTokenCheckBox.checked = True
    widget.onApplyButton()
    _run_timer(widget)
    assert lnmtl.qt.QSettings().value(server_settings.SETTINGS_SERVER_TOKEN) == "not-the-token"
    widget.ui.rememberTokenCheckBox.checked = False  # unticked: taken out of the settings again
    widget.onApplyButton()
    _run_timer(widget)
    assert lnmtl.qt.QSettings().value(server_settings.SETTINGS_SERVER_TOKEN) is None
    assert widget.ui.serverTokenLineEdit.text == "not-the-token"


def test_a_token_stored_without_remember_is_used_once_and_taken_out_of_the_settings(monkeypatch):
    monkeypatch.setattr(lnmtl.qt.QSettings, "store", {server_settings.SETTINGS_SERVER_TOKEN: "old",
                                                      server_settings.SETTINGS_SERVER_URL: "https://gpu:8443"})
    settings = lnmtl.qt.QSettings()
    assert server_settings.loadServer(settings, "local") == ("https://gpu:8443", "old", False)
    assert settings.value(server_settings.SETTINGS_SERVER_TOKEN) is None
    server_settings.saveServer(settings, "https://gpu:8443", "new", True, "cpu", "")
    assert server_settings.loadServer(settings, "local") == ("https://gpu:8443", "new", True)
