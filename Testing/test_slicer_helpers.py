"""The module's Slicer-side helpers without a server: the results table (header, review-first
order, empty probability without a usable mask, rows rebuilt from segment tags), the dependency
installer (versions, one question, one pinned pip call, Slicer's own packages kept) and the local
server's life cycle (kept warm, restarted when it died or its settings changed)."""

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from slicer_harness import import_slicer_or_skip

import_slicer_or_skip()
import slicer_module_stubs  # noqa: E402
from LymphNodeMTLLib.core import node_status  # noqa: E402
from LymphNodeMTLLib.core.case import Case  # noqa: E402
from LymphNodeMTLLib.core.geometry import VolumeGeometry  # noqa: E402
from LymphNodeMTLLib.core.node_result import NodeResult  # noqa: E402
from LymphNodeMTLSlicerLib import dependency_installer, results_table, server_process  # noqa: E402
from LymphNodeMTLSlicerLib.run_plans import PredictionPlan  # noqa: E402

lnmtl = slicer_module_stubs.import_module_file()
SHAPE = (10, 20, 20)


def _result(node_id, status, probability, k0, agreement=float("nan"), low=float("nan"), high=float("nan")):
    mask = np.zeros((2, 3, 3), bool)
    mask[0, 1, 1] = mask[1, 1, 2] = True
    return NodeResult(node_id, (float(k0), 5.0, 5.0), (k0, 4, 4), (k0 + 2, 7, 7), mask,
                      probability=probability, predicted_label=int(probability > 0.5), volume_mm3=2.0,
                      short_axis_mm=1.0, long_axis_mm=2.0, mean_hu=30.0, status=status,
                      mask_agreement=agreement, probability_low=low, probability_high=high)


@pytest.fixture
def written(mrml_scene):
    """Four results written through the Logic's apply step, in this segment order."""
    import slicer

    volume = slicer.util.addVolumeFromArray(np.zeros(SHAPE, np.int16), np.eye(4), name="CT")
    results = [_result("1", node_status.OK, 0.2, 0, 0.95, 0.15, 0.25),
               _result("2", node_status.EMPTY_MASK, 0.9, 2),
               _result("3", node_status.OK, 0.7, 4, 0.9, 0.6, 0.8),
               _result("4", node_status.LOW_AGREEMENT, 0.6, 6, 0.41, 0.3, 0.85)]
    logic = lnmtl.LymphNodeMTLLogic()
    case = Case(np.zeros(SHAPE, np.int16), VolumeGeometry(np.eye(4), SHAPE), [], {})
    summary = logic.applyPrediction(PredictionPlan(volume, None, None, case), results)
    return logic, summary


def test_table_has_a_header_and_puts_nodes_to_review_first(written):
    logic, summary = written
    table = summary.tableNode
    assert table.GetUseColumnTitleAsColumnHeader()
    ids = [table.GetCellText(row, 0) for row in range(table.GetNumberOfRows())]
    assert ids == ["2", "4", "1", "3"]  # not ok first (stable), then the segment order
    assert list(logic.lymphNodeSegments(summary.segmentationNode)) == ["1", "2", "3", "4"]
    # jumping by table row finds the node of that row, not a header row called "id"
    segment_id, _centre = logic.jumpToNode(table, 0)
    assert segment_id == logic.lymphNodeSegments(summary.segmentationNode)["2"]


def test_no_probability_without_a_usable_mask_and_the_interval_otherwise(written):
    logic, summary = written
    table = summary.tableNode
    column = {table.GetColumnName(c): c for c in range(table.GetNumberOfColumns())}
    row_of = {table.GetCellText(r, 0): r for r in range(table.GetNumberOfRows())}
    cell = lambda node, name: table.GetCellText(row_of[node], column[name])  # noqa: E731
    assert cell("2", "status") == "empty_mask"
    assert cell("2", "probability") == "" and cell("2", "label") == ""
    assert cell("4", "status") == "low_agreement"
    assert (cell("4", "probability"), cell("4", "probability_low"), cell("4", "probability_high")) == \
        ("0.6000", "0.3000", "0.8500")
    assert cell("4", "mask_agreement") == "0.410" and cell("4", "label") == "metastatic"
    assert cell("1", "probability") == "0.2000" and cell("1", "label") == "benign"
    assert cell("3", "mask_agreement") == "0.900"
    rows = logic.tableRows(table)
    assert np.isnan(rows["2"]["probability"]) and rows["4"]["probability_high"] == pytest.approx(0.85)


def test_rows_are_rebuilt_from_segment_tags_with_status_and_interval(written):
    """A table lost (or a scene saved without it): the rows come back from the segments alone."""
    import slicer

    logic, summary = written
    before = logic.tableRows(summary.tableNode)
    slicer.mrmlScene.RemoveNode(summary.tableNode)
    fresh = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode")
    results_table.syncTable(fresh, summary.segmentationNode, {})
    after = logic.tableRows(fresh)
    assert list(after) == list(before)
    for node_id in before:
        assert repr(after[node_id]) == repr(before[node_id]), node_id


def test_csv_export_is_the_command_lines_nodes_csv_with_empty_unknowns(written, tmp_path):
    from results_csv import read_results_csv

    logic, summary = written
    volume = summary.segmentationNode.GetNodeReference(
        summary.segmentationNode.GetReferenceImageGeometryReferenceRole())
    report = logic.exportResults(summary.segmentationNode, summary.tableNode, volume, tmp_path)
    rows = {r["id"]: r for r in read_results_csv(report["table"])}
    assert list(rows) == ["1", "2", "3", "4"]
    assert np.isnan(rows["2"]["probability"])
    assert rows["4"]["probability"] == pytest.approx(0.6) and rows["1"]["mean_hu"] == pytest.approx(30.0)


# --- dependency installer -------------------------------------------------------------------------
def _versions(monkeypatch, versions):
    monkeypatch.setattr(dependency_installer, "installedVersion",
                        lambda name: versions.get(name, "4.99.0" if name == "typing-extensions" else None))


def test_versions_are_checked_not_only_presence(monkeypatch):
    installed = {name: "0.0" for name in dependency_installer.PIP_REQUIREMENTS}
    installed.update(torch="2.5.1", monai="1.5.0", fastapi="0.165.0")
    _versions(monkeypatch, installed)
    missing = dependency_installer.missingRequirements()
    assert "torch" in missing and "installed: 2.5.1" in missing["torch"]  # monai 1.6 needs >= 2.8
    assert "monai" in missing and "installed: 1.5.0" in missing["monai"]
    assert "fastapi" not in missing
    # A torch that is there and recent enough is kept, even above the install pin.
    installed["torch"] = "2.13.0"
    assert "torch" not in dependency_installer.missingRequirements()


def test_one_question_then_torch_through_pytorchutils_and_one_pinned_pip_call(monkeypatch):
    import slicer

    calls, questions = [], []
    _versions(monkeypatch, {"torch": "2.1.0"})
    torch_logic = types.SimpleNamespace(installTorch=lambda **kwargs: calls.append(("torch", kwargs)) or object())
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=lambda: torch_logic))
    monkeypatch.setattr(slicer.util, "pip_install", lambda args: calls.append(("pip", args)), raising=False)

    class Cursor:
        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

    monkeypatch.setattr(slicer.util, "WaitCursor", Cursor, raising=False)
    with pytest.raises(RuntimeError, match="still not met"):  # the fake installs nothing
        dependency_installer.ensureRequirements(confirm=lambda text: questions.append(text) or True)
    assert len(questions) == 1 and "torch>=2.8,<2.13 (installed: 2.1.0)" in questions[0]
    assert "monai>=1.6,<1.7 (not installed)" in questions[0]
    assert calls[0] == ("torch", {"askConfirmation": False, "torchVersionRequirement": ">=2.8,<2.13"})
    pips = [args for kind, args in calls if kind == "pip"]
    assert len(pips) == 1 and pips[0][-1] == "--no-deps"
    packages = [arg.split("=")[0].split(">")[0].split("<")[0] for arg in pips[0][:-1]]
    assert "monai" in packages and "fastapi" in packages and "uvicorn" in packages
    assert all(any(op in arg for op in ("==", "<")) for arg in pips[0][:-1])  # pinned
    assert not {p.lower() for p in packages} & {"numpy", "simpleitk", "pydicom", "highdicom", "torch"}


def test_slicer_packaging_checks_and_installs_where_slicer_has_it(monkeypatch):
    """Slicer >= 5.11: pip_check says what is met; pip_ensure installs the tested versions (a
    constraints file) with Slicer's own packages skipped, after the module's one question."""
    import slicer

    calls, questions, checked = [], [], []
    installed = {name: "0.0" for name in dependency_installer.PIP_REQUIREMENTS}
    installed.update(torch="2.9.0", monai="1.5.0")
    _versions(monkeypatch, installed)

    def pip_check(requirement):
        checked.append(requirement)
        return not requirement.startswith("monai")

    def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True, requester=None, **kw):
        calls.append((requirements, Path(constraints).read_text(), skip_packages, prompt_install, requester))

    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_check, packaging.pip_ensure = pip_check, pip_ensure
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(slicer, "packaging", packaging, raising=False)
    monkeypatch.setattr(slicer.util, "pip_install", lambda args: pytest.fail("the 5.10 path ran"), raising=False)

    assert dependency_installer.slicerPackaging() is packaging
    missing = dependency_installer.missingRequirements()
    assert list(missing) == ["monai"] and "installed: 1.5.0" in missing["monai"]
    assert "fastapi>=0.165,<1" in checked  # the accepted range, as pip_check reads it
    with pytest.raises(RuntimeError, match="still not met"):  # the fake installs nothing
        dependency_installer.ensureRequirements(confirm=lambda text: questions.append(text) or True)
    assert len(questions) == 1 and len(calls) == 1
    requirements, constraints, skipped, prompt, requester = calls[0]
    assert requirements == ["monai>=1.6,<1.7"] and prompt is False and requester == "Lymph Node MTL"
    assert "monai==1.6.1\n" in constraints and "fastapi==0.165.0\n" in constraints
    assert {"torch", "numpy", "SimpleITK", "pydicom"} <= set(skipped)


def test_declining_installs_nothing(monkeypatch):
    import slicer

    _versions(monkeypatch, {})
    monkeypatch.setattr(slicer.util, "pip_install", lambda args: pytest.fail("installed after No"), raising=False)
    assert dependency_installer.ensureRequirements(confirm=lambda text: False) is False


def test_dicom_seg_needs_are_said_and_pydicom_3_is_never_pulled_into_slicer_5_10():
    text = dependency_installer.DICOM_SEG_NEEDS
    assert "highdicom" in text and "pydicom>=3" in text and "5.10" in text
    installed = " ".join(spec[2] + name for name, spec in dependency_installer.PIP_REQUIREMENTS.items())
    assert "pydicom" not in installed and "highdicom" not in installed


# --- local server life cycle (a stand-in process) -----------------------------------------------------
class FakeRunner:
    started = []

    def __init__(self):
        self.running, self.output = False, ""

    def start(self, program, arguments, environment, logPath):
        self.running, self.arguments, self.environment = True, arguments, environment
        self.output = f"listening on http://127.0.0.1:{4000 + len(FakeRunner.started)}\n"
        FakeRunner.started.append(self)

    def readOutput(self):
        output, self.output = self.output, ""
        return output

    def isRunning(self):
        return self.running

    def exitCode(self):
        return None if self.running else -9

    pid = property(lambda self: id(self))

    def stop(self, graceS=5.0):
        self.running = False


def test_local_server_is_kept_warm_and_restarted_when_it_died_or_settings_changed(tmp_path):
    FakeRunner.started = []
    server = server_process.LocalServer(FakeRunner, python="python")
    server.logPath = tmp_path / "server.log"
    server.ensure("cpu", None)
    assert server.poll() == "ready" and server.url == "http://127.0.0.1:4000"
    first = FakeRunner.started[0]
    assert first.arguments[:3] == ["-m", "LymphNodeMTLLib.commands.cli", "serve"]
    assert first.arguments[first.arguments.index("--host") + 1] == "127.0.0.1"
    assert first.arguments[first.arguments.index("--device") + 1] == "cpu"
    assert first.arguments[first.arguments.index("--parent-pid") + 1] == str(os.getpid())
    assert first.environment["LYMPHNODE_MTL_TOKEN"] == server.token and server.token
    assert server.token not in first.arguments  # not visible in the process list

    server.ensure("cpu", None)
    assert len(FakeRunner.started) == 1  # warm: the same process

    server.logPath.write_text("Traceback\nMemoryError: out of memory\n"
                              "2026-01-01 00:00:00,000 INFO lymphnode_mtl.server: GET /v1/jobs/{job_id} 200 1.0 ms\n")
    first.running = False  # it died
    assert server.poll() == "failed"
    assert "stopped (exit code -9)" in server.error and "MemoryError" in server.error
    assert "Apply again" in server.unreachableMessage()
    server.ensure("cpu", None)
    assert len(FakeRunner.started) == 2 and server.poll() == "ready"

    server.ensure("cuda", "/models/other")  # another device or model: another server
    third = FakeRunner.started[2]
    assert not FakeRunner.started[1].running and third.running
    assert third.arguments[third.arguments.index("--model") + 1] == "/models/other"
    server.stop()
    assert server.state == "stopped" and not third.running
