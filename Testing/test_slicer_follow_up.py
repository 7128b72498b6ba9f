"""The module's Follow-up on real MRML against a REAL local inference server (bundled model, CPU):
a phantom baseline + follow-up pair with known truth loaded as two CT volumes, the baseline's
results made by Apply, the follow_up job -> a follow-up segmentation (the baseline's segment ids
and names) and a table of both time points with the truth's response; corrections at follow-up
re-measured (only the corrected rows change, the response is suggested again); in the Widget, the
section's Apply runs on the job timer and a row click moves the Red view to the node in the
follow-up CT and the Yellow view to it in the baseline CT."""

import contextlib
import math
import time
import types

import numpy as np
import pytest
from slicer_harness import import_slicer_or_skip

import_slicer_or_skip()
import slicer_module_stubs  # noqa: E402
from LymphNodeMTLLib.core import nodal_response as recist  # noqa: E402
from LymphNodeMTLLib.core import node_status  # noqa: E402
from LymphNodeMTLLib.outputs.follow_up_table import response_of_rows  # noqa: E402
from LymphNodeMTLLib.phantoms.follow_up_pair import generate_follow_up_pair  # noqa: E402

lnmtl = slicer_module_stubs.import_module_file()
from LymphNodeMTLSlicerLib import follow_up_table  # noqa: E402


@pytest.fixture(scope="module")
def pair():
    """Three nodes on a small grid (40 x 128 x 128 voxels), the patient moved up to 8 mm and 5 degrees:
    two targets shrunk and one node vanished, a decisive partial response."""
    pair = generate_follow_up_pair(np.random.default_rng(1), 3, 0, spacing=(1.0, 1.0, 2.0), direction=np.eye(3),
                                   field_of_view_mm=(128.0, 128.0, 80.0), max_shift_mm=8.0, max_angle_deg=5.0)
    assert pair.decisive and pair.response.category == recist.PARTIAL_RESPONSE
    assert {f.fate for f in pair.fates} == {"shrunk", "vanished"}
    return pair


@pytest.fixture(scope="module")
def logic():
    return slicer_module_stubs.warm_logic(lnmtl)


def _volume(case, name):
    import slicer

    return slicer.util.addVolumeFromArray(np.round(case.image).astype(np.int16), case.geometry.ijk_to_ras, name=name)


def _baseline(pair, logic):
    """The two CTs in the scene and the baseline's results, made by Apply."""
    import slicer

    baseline, follow_up = _volume(pair.baseline, "CT baseline"), _volume(pair.follow_up, "CT follow-up")
    seeds = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Seeds")
    for node in pair.baseline.nodes:
        seeds.AddControlPoint(*node.seed_ras, node.node_id)
    return baseline, logic.process(baseline, seeds, device="cpu").segmentationNode, follow_up


def _segments(segmentation_node):
    segmentation = segmentation_node.GetSegmentation()
    return {segmentation.GetNthSegmentID(i): segmentation.GetNthSegment(i).GetName()
            for i in range(segmentation.GetNumberOfSegments())}


def _check_follow_up(pair, logic, baseline_seg, summary):
    seg_node, table_node = summary.segmentationNode, summary.tableNode
    ids = [n.node_id for n in pair.baseline.nodes]
    assert _segments(seg_node) == _segments(baseline_seg)  # ids and names as at baseline
    assert list(logic.lymphNodeSegments(seg_node)) == ids
    rows = {r["id"]: r for r in follow_up_table.readRows(table_node)}
    assert list(rows) == ids
    for fate in pair.fates:
        row = rows[fate.node_id]
        assert row["baseline_short_axis_mm"] == pytest.approx(fate.baseline_short_axis_mm, abs=1.5)
        if fate.fate == "vanished":
            assert row["status"] == node_status.NOT_FOUND and row["follow_up_short_axis_mm"] == 0.0
            continue
        assert row["follow_up_short_axis_mm"] == pytest.approx(fate.follow_up_short_axis_mm, abs=1.5)
        assert row["short_axis_change_mm"] == pytest.approx(
            row["follow_up_short_axis_mm"] - row["baseline_short_axis_mm"], abs=0.02)
        centre = seg_node.GetSegmentCenterRAS(logic.lymphNodeSegments(seg_node)[fate.node_id])
        assert np.linalg.norm(np.subtract(centre, fate.follow_up_centre_ras)) <= 3.0
    response = follow_up_table.response(table_node)
    assert response["category"] == pair.response.category and response["target_nodes"] == pair.response.targets
    assert response_of_rows(list(rows.values())).category == response["category"]  # the table says the same
    return rows


def _erase(seg_node, volume, logic, node_id, keep_half):
    import slicer

    segment_id = logic.lymphNodeSegments(seg_node)[node_id]
    mask = logic.segmentMask(seg_node, segment_id, volume)
    mask = lnmtl.LymphNodeMTLTest.eraseHalf(mask) if keep_half else np.zeros_like(mask)
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype(np.uint8), seg_node, segment_id, volume)


def test_follow_up_job_gives_the_follow_up_segmentation_table_and_response_and_remeasures_corrections(
        mrml_scene, pair, logic):
    baseline, baseline_seg, follow_up = _baseline(pair, logic)
    summary = logic.followUp(baseline, baseline_seg, follow_up, device="cpu")
    rows = _check_follow_up(pair, logic, baseline_seg, summary)
    assert "Suggested nodal response" in follow_up_table.responseLine(follow_up_table.response(summary.tableNode))

    # corrections at follow-up: one node cut to half, the other target erased (not found after all)
    survivors = [f.node_id for f in pair.fates if f.fate == "shrunk"]
    halved, erased = survivors
    _erase(summary.segmentationNode, follow_up, logic, halved, keep_half=True)
    _erase(summary.segmentationNode, follow_up, logic, erased, keep_half=False)
    remeasured = logic.remeasureFollowUp(summary.tableNode, device="cpu")
    assert remeasured.updatedIds == [halved] and remeasured.skippedEmptyIds == [erased]
    after = {r["id"]: r for r in follow_up_table.readRows(summary.tableNode)}
    untouched = next(f.node_id for f in pair.fates if f.fate == "vanished")
    assert after[untouched] == rows[untouched]
    assert after[halved]["follow_up_volume_mm3"] < 0.75 * rows[halved]["follow_up_volume_mm3"]
    assert after[halved]["baseline_short_axis_mm"] == rows[halved]["baseline_short_axis_mm"]
    assert after[halved]["short_axis_change_mm"] == pytest.approx(
        after[halved]["follow_up_short_axis_mm"] - after[halved]["baseline_short_axis_mm"], abs=0.02)
    assert after[erased]["status"] == node_status.NOT_FOUND and after[erased]["follow_up_short_axis_mm"] == 0.0
    response = follow_up_table.response(summary.tableNode)
    targets = pair.response.targets
    expected_sum = sum(after[t]["follow_up_short_axis_mm"] for t in targets)
    assert response["follow_up_sum_mm"] == pytest.approx(expected_sum, abs=0.05)
    # nothing corrected since: nothing to re-measure, nothing changes
    assert logic.remeasureFollowUp(summary.tableNode, device="cpu").updatedIds == []
    assert {r["id"]: r for r in follow_up_table.readRows(summary.tableNode)} == after


def test_follow_up_refuses_the_baseline_ct_as_follow_up_a_segmentation_without_nodes_and_a_results_table(mrml_scene, pair, logic):
    import slicer

    baseline = _volume(pair.baseline, "CT baseline")
    empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "not results")
    with pytest.raises(lnmtl.InputError, match="no lymph-node segment"):
        logic.followUp(baseline, empty, _volume(pair.follow_up, "CT follow-up"))
    with pytest.raises(lnmtl.InputError, match="another CT than the baseline"):
        logic.followUp(baseline, empty, baseline)
    results_table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "results")
    seeds = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Seeds")
    seeds.AddControlPoint(*pair.baseline.nodes[0].seed_ras, pair.baseline.nodes[0].node_id)
    baseline_seg = logic.process(baseline, seeds, device="cpu").segmentationNode
    with pytest.raises(lnmtl.InputError, match="'results' is not a follow-up table"):
        logic.followUp(baseline, baseline_seg, _volume(pair.follow_up, "CT 2"), results_table)
    assert results_table.GetTable().GetNumberOfColumns() == 0  # nothing written
    with pytest.raises(lnmtl.InputError, match="follow-up table"):
        logic.remeasureFollowUp(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode"))


# --- the Widget's Follow-up section ---------------------------------------------------------------------
class Field(types.SimpleNamespace):
    """A stand-in widget: attributes are its Qt properties; other calls are recorded."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args: self.__dict__.setdefault("calls", []).append((name, args))


class Selector(Field):
    def currentNode(self):
        return self.__dict__.get("node")

    def setCurrentNode(self, node):
        self.node = node


class Index:
    """The clicked cell of a table view: its row's id column reads `node_id`."""

    def __init__(self, node_id):
        self.node_id = node_id

    def row(self):
        return 0

    def sibling(self, row, column):
        return types.SimpleNamespace(data=lambda: self.node_id)


def _views(scene):
    views = {}
    for name in ("Red", "Yellow"):
        slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
        slice_node.SetLayoutName(name)
        slice_node.SetOrientationToAxial()
        composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetLayoutName(name)
        views[name] = (slice_node, composite)
    return views


def _run_timer(widget, timeout=180.0):
    end = time.monotonic() + timeout
    while widget._job is not None:
        assert time.monotonic() < end, "the job did not end"
        widget._pollTimer.fire()
        time.sleep(0.05)


def test_widget_section_applies_on_the_timer_row_click_shows_both_cts_and_remeasure_updates_the_row(
        mrml_scene, pair, logic, monkeypatch):
    import slicer

    monkeypatch.setattr(lnmtl.qt.QSettings, "store", {})
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", lambda *a, **k: contextlib.nullcontext(), raising=False)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **k: None, raising=False)
    errors = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **k: errors.append(text), raising=False)
    baseline, baseline_seg, follow_up = _baseline(pair, logic)
    views = _views(mrml_scene)

    widget = lnmtl.LymphNodeMTLWidget(None)
    widget.logic = logic
    widget.ui = types.SimpleNamespace(
        applyButton=Field(), reclassifyButton=Field(), exportButton=Field(), statusLabel=Field(text=""),
        progressBar=Field(value=0), serverUrlLineEdit=Field(text="local"), serverTokenLineEdit=Field(text=""),
        rememberTokenCheckBox=Field(checked=False),
        followUpBaselineVolumeSelector=Selector(node=baseline), followUpBaselineSegmentationSelector=Selector(),
        followUpVolumeSelector=Selector(node=follow_up), followUpTableSelector=Selector(),
        followUpApplyButton=Field(enabled=False), followUpRemeasureButton=Field(enabled=False),
        followUpTableView=Field(), followUpResponseLabel=Field(text=""))
    widget._pollTimer = lnmtl.qt.QTimer()
    widget._pollTimer.connect("timeout()", widget._pollJob)
    widget._parameterNode = lnmtl.LymphNodeMTLParameterNode(None)
    widget._parameterNode.device = "cpu"
    monkeypatch.setattr(lnmtl.dependency_installer, "ensureRequirements", lambda: True)
    refine = Field()  # the Refine section: which node it follows
    controls = widget.followUp = lnmtl.FollowUpControls(widget.ui, logic, lambda: widget._parameterNode,
                                                        widget._prepareServer, widget._startJob, refine)
    ui = widget.ui
    assert not ui.followUpApplyButton.enabled  # no baseline results chosen yet
    ui.followUpBaselineSegmentationSelector.setCurrentNode(baseline_seg)
    controls.updateButtons(False)
    assert ui.followUpApplyButton.enabled and not ui.followUpRemeasureButton.enabled

    controls.apply()
    assert widget._job is not None and not ui.followUpApplyButton.enabled  # one job at a time
    _run_timer(widget)
    assert not errors, errors
    table_node = ui.followUpTableSelector.currentNode()
    assert ui.statusLabel.text == "3 node(s) carried into the follow-up CT."
    assert ("setMRMLTableNode", (table_node,)) in ui.followUpTableView.calls
    assert ui.followUpResponseLabel.text.startswith("Suggested nodal response (RECIST 1.1, for the radiologist")
    assert "partial_response" in ui.followUpResponseLabel.text
    assert ui.followUpApplyButton.enabled and ui.followUpRemeasureButton.enabled
    nodes = follow_up_table.references(table_node)
    rows = _check_follow_up(pair, logic, baseline_seg, types.SimpleNamespace(
        segmentationNode=nodes["followUpSegmentation"], tableNode=table_node))

    # a row click: Red shows the follow-up CT at the node, Yellow the baseline CT at it
    node_id = next(f.node_id for f in pair.fates if f.fate == "shrunk")
    controls.onRowClicked(Index(node_id))
    expected = {"Red": (follow_up, nodes["followUpSegmentation"]), "Yellow": (baseline, baseline_seg)}
    for view, (volume, seg_node) in expected.items():
        slice_node, composite = views[view]
        assert composite.GetBackgroundVolumeID() == volume.GetID()
        centre = seg_node.GetSegmentCenterRAS(logic.lymphNodeSegments(seg_node)[node_id])
        slice_to_ras = slicer.util.arrayFromVTKMatrix(slice_node.GetSliceToRAS())
        assert slice_to_ras[:3, 3] == pytest.approx(centre, abs=1e-6)
    truth = pair.fate(node_id)
    red_centre = slicer.util.arrayFromVTKMatrix(views["Red"][0].GetSliceToRAS())[:3, 3]
    yellow_centre = slicer.util.arrayFromVTKMatrix(views["Yellow"][0].GetSliceToRAS())[:3, 3]
    assert np.linalg.norm(red_centre - truth.follow_up_centre_ras) <= 3.0
    assert np.linalg.norm(yellow_centre - truth.baseline_centre_ras) <= 3.0
    assert ui.statusLabel.text == (f"Node {node_id}: Red view: follow-up CT; Yellow view: baseline CT; "
                                   "Refine works on it in the follow-up CT")
    p = widget._parameterNode
    assert p.inputVolume is follow_up and p.outputSegmentation is nodes["followUpSegmentation"]
    assert refine.calls == [("follow", (node_id,))]

    # a correction at follow-up, then Re-measure: that row's follow-up columns change
    _erase(nodes["followUpSegmentation"], follow_up, logic, node_id, keep_half=True)
    controls.remeasure()
    _run_timer(widget)
    assert not errors, errors
    assert ui.statusLabel.text == "1 node(s) re-measured at follow-up."
    after = {r["id"]: r for r in follow_up_table.readRows(table_node)}
    assert after[node_id]["follow_up_volume_mm3"] < 0.75 * rows[node_id]["follow_up_volume_mm3"]
    assert {k: v for k, v in after.items() if k != node_id} == {k: v for k, v in rows.items() if k != node_id}
    assert not math.isnan(follow_up_table.response(table_node)["follow_up_sum_mm"])
    assert ui.followUpResponseLabel.text == follow_up_table.responseLine(follow_up_table.response(table_node))

    # a Refine click on the other carried node (as the section's click would send it), then Re-measure
    other = next(f for f in pair.fates if f.fate == "shrunk" and f.node_id != node_id)
    seg_node = nodes["followUpSegmentation"]
    unrefined = logic.segmentMask(seg_node, logic.lymphNodeSegments(seg_node)[other.node_id], follow_up)
    click = np.add(other.follow_up_centre_ras, (0.0, 0.0, 2.0))
    assert logic.addClick(follow_up, seg_node, other.node_id, click, device="cpu").updatedIds == [other.node_id]
    refined = logic.segmentMask(seg_node, logic.lymphNodeSegments(seg_node)[other.node_id], follow_up)
    assert not np.array_equal(refined, unrefined)
    controls.remeasure()
    _run_timer(widget)
    assert not errors, errors
    assert ui.statusLabel.text == "1 node(s) re-measured at follow-up."
    again = {r["id"]: r for r in follow_up_table.readRows(table_node)}
    assert again[other.node_id]["follow_up_volume_mm3"] == pytest.approx(
        refined.sum() * float(np.prod(pair.follow_up.geometry.spacing)), rel=0.01)
    assert again[node_id] == after[node_id]
