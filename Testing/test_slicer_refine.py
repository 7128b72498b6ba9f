"""Refining a node prompt by prompt, on real MRML (slicer-core) against a real local inference
server: positive and negative clicks and long-axis lines live in markups tied to the node, each
prompt sends the node's whole prompt list and gets the engine's own mask for it (NodeEngine.refine),
the segment, its tags and its table row follow; Undo brings back exactly the mask, tags and row
before the last prompt and walks back to the node as Apply made it; a segment edited by hand is
replaced only with an explicit yes; a request that fails or is cancelled leaves the scene as it was.
The Refine section's wiring (refine_controls.py) is driven with stand-in widgets and real markups
events: place mode, a placed point, the confirmation question, Esc, Undo."""

import contextlib
import time
import types

import numpy as np
import pytest
from slicer_harness import import_slicer_or_skip, read_scene_mrml, write_scene_mrml

import_slicer_or_skip()
import slicer_module_stubs  # noqa: E402

lnmtl = slicer_module_stubs.import_module_file()  # first: the Qt and scripted-module stand-ins
from LymphNodeMTLLib.core import segment_tags as tag_keys  # noqa: E402
from LymphNodeMTLLib.core.errors import InputError  # noqa: E402
from LymphNodeMTLLib.core.node_prompts import Click, NodePrompts  # noqa: E402
from LymphNodeMTLLib.core.segment_tags import TERMINOLOGY_TAG, segment_tags  # noqa: E402
from LymphNodeMTLLib.phantoms.case_generator import generate_phantom_case  # noqa: E402
from LymphNodeMTLSlicerLib import node_refinement, node_segments, prompt_markups, results_table  # noqa: E402
from LymphNodeMTLSlicerLib.module_job import JobCancelled, JobFailed  # noqa: E402
from LymphNodeMTLSlicerLib.refine_controls import RefineControls  # noqa: E402

TAG_KEYS = [value for name, value in vars(tag_keys).items()
            if name.startswith("TAG_") and name != "TAG_PREFIX"] + [TERMINOLOGY_TAG]


@pytest.fixture(scope="module")
def phantom():
    return generate_phantom_case(np.random.default_rng(13), 2, spacing=(1.0, 1.0, 2.0),
                                 direction=np.eye(3), field_of_view_mm=(96.0, 96.0, 64.0))


@pytest.fixture(scope="module")
def logic():
    return slicer_module_stubs.warm_logic(lnmtl)


@pytest.fixture(scope="module")
def engine():
    """The same model in this process: what each refinement's mask is compared with."""
    from LymphNodeMTLLib.inference.engine import NodeEngine
    from LymphNodeMTLLib.network.model_store import default_model_dir

    return NodeEngine(default_model_dir(), "cpu")


@pytest.fixture
def applied(mrml_scene, phantom, logic):
    """The CT, its seeds and the segmentation and table Apply made (refinement history emptied)."""
    import slicer

    logic.refinements.clear()
    volume = slicer.util.addVolumeFromArray(np.round(phantom.image).astype(np.int16),
                                            phantom.geometry.ijk_to_ras, name="CT")
    seeds = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Seeds")
    seeds.AddControlPoint(*phantom.nodes[0].seed_ras, phantom.nodes[0].node_id)
    summary = logic.process(volume, seeds, device="cpu")
    return types.SimpleNamespace(volume=volume, seeds=seeds, seg=summary.segmentationNode, table=summary.tableNode,
                                 node=phantom.nodes[0].node_id, seed=_tag_seed(phantom.nodes[0].seed_ras))


def _tag_seed(ras):
    """A seed as the segment's tags keep it (mm to 3 decimals)."""
    return tuple(float(f"{v:.3f}") for v in ras)


def _near(ras, offset):
    return tuple(float(v) for v in np.add(ras, offset))


def _state(logic, applied, node_id):
    """Everything a refinement changes and Undo must bring back: mask, every tag, name, colour, the
    whole table (rows in order); None for the segment when the node has none."""
    segment_id = logic.lymphNodeSegments(applied.seg).get(node_id)
    segment = None
    if segment_id is not None:
        found = applied.seg.GetSegmentation().GetSegment(segment_id)
        tags = {}
        for key in TAG_KEYS:
            import vtk

            value = vtk.reference("")
            tags[key] = str(value) if found.GetTag(key, value) else None
        segment = (logic.segmentMask(applied.seg, segment_id, applied.volume).tobytes(), tags, found.GetName(),
                   tuple(found.GetColor()))
    return segment, repr(logic.tableRows(applied.table))


def _clicks(applied, node_id):
    clicks = prompt_markups.promptNode(applied.seg, node_id, prompt_markups.CLICKS)
    return [] if clicks is None else [(c.ras, c.positive) for c in prompt_markups.clicksOf(clicks)]


def _assert_engine_result(logic, engine, applied, summary, prompts):
    """The segment, its tags and its row are the engine's own answer to `prompts`."""
    (result,) = summary.results
    case = logic.caseFromNodes(applied.volume)
    direct = engine.refine(case, prompts)
    shape = case.image.shape
    assert np.array_equal(result.full_mask(shape), direct.full_mask(shape))
    assert result.probability == pytest.approx(direct.probability, abs=1e-6, nan_ok=True)
    assert result.extra.get("prompts") == len(prompts.clicks)
    seg, table = summary.segmentationNode, summary.tableNode
    segment_id = logic.lymphNodeSegments(seg)[prompts.node_id]
    assert np.array_equal(logic.segmentMask(seg, segment_id, applied.volume), result.full_mask(shape))
    assert not logic.isSegmentEdited(seg, segment_id, applied.volume)
    segment = seg.GetSegmentation().GetSegment(segment_id)
    tags = node_segments.tagsOf(segment)
    for key, value in segment_tags(result).items():
        if key != TERMINOLOGY_TAG:
            import vtk

            found = vtk.reference("")
            assert segment.GetTag(key, found) and str(found) == value, key
    assert tags.node_id == prompts.node_id
    row = logic.tableRows(table)[prompts.node_id]
    expected = results_table.rowFromResult(result, engine.config.labels)
    assert repr(sorted(row.items())) == repr(sorted(expected.items()))


# --- clicks -----------------------------------------------------------------------------------------
def test_clicks_refine_the_node_its_tags_and_its_row_as_the_engine_does(applied, phantom, logic, engine):
    first = _near(phantom.nodes[0].seed_ras, (2.0, 1.0, 0.0))
    summary = logic.addClick(applied.volume, applied.seg, applied.node, first, positive=True, device="cpu")
    assert summary.updatedIds == [applied.node] and summary.segmentationNode is applied.seg
    assert summary.tableNode is applied.table
    _assert_engine_result(logic, engine, applied, summary,
                          NodePrompts(applied.node, seed=applied.seed, clicks=(Click(first, True),)))

    second = _near(phantom.nodes[0].seed_ras, (-9.0, 0.0, 0.0))
    summary = logic.addClick(applied.volume, applied.seg, applied.node, second, positive=False, device="cpu")
    prompts = NodePrompts(applied.node, seed=applied.seed, clicks=(Click(first, True), Click(second, False)))
    _assert_engine_result(logic, engine, applied, summary, prompts)

    # The record: one point list tied to the node, in order, + green / - red.
    clicks = prompt_markups.promptNode(applied.seg, applied.node, prompt_markups.CLICKS)
    assert clicks.GetName() == f"LN {applied.node} clicks"
    assert [clicks.GetNthControlPointLabel(i) for i in range(2)] == ["+", "-"]
    assert [clicks.GetNthControlPointSelected(i) for i in range(2)] == [True, False]
    assert _clicks(applied, applied.node) == [(first, True), (second, False)]
    assert prompt_markups.nodePrompts(applied.seg, applied.node, applied.seed) == prompts
    assert logic.refinements.count(applied.seg, applied.node) == 2


# --- Undo --------------------------------------------------------------------------------------------
def test_undo_restores_mask_tags_and_row_exactly_and_walks_back_to_the_applied_node(applied, phantom, logic):
    states = [_state(logic, applied, applied.node)]
    offsets = [((2.0, 1.0, 0.0), True), ((-9.0, 0.0, 0.0), False), ((0.0, 3.0, 0.0), True)]
    for offset, positive in offsets:
        logic.addClick(applied.volume, applied.seg, applied.node, _near(phantom.nodes[0].seed_ras, offset),
                       positive=positive, device="cpu")
        states.append(_state(logic, applied, applied.node))
    assert len(_clicks(applied, applied.node)) == 3

    for left in (2, 1, 0):
        line = logic.undo(applied.seg, applied.node)
        assert "Undone" in line and "\n" not in line
        assert _state(logic, applied, applied.node) == states[left]
        assert len(_clicks(applied, applied.node)) == left
    assert not logic.isSegmentEdited(applied.seg, logic.lymphNodeSegments(applied.seg)[applied.node], applied.volume)
    with pytest.raises(InputError, match="no refinement to undo"):
        logic.undo(applied.seg, applied.node)

    # After undoing, new prompts start from the applied node again.
    logic.addClick(applied.volume, applied.seg, applied.node, _near(phantom.nodes[0].seed_ras, offsets[0][0]),
                   device="cpu")
    assert _state(logic, applied, applied.node) == states[1]


# --- long axis ---------------------------------------------------------------------------------------
def test_a_line_draws_a_new_node_that_clicks_then_refine_and_undo_removes(applied, phantom, logic, engine):
    before = _state(logic, applied, applied.node)
    seed = np.asarray(phantom.nodes[1].seed_ras)
    ends = (_near(seed, (-6.0, 0.0, 0.0)), _near(seed, (6.0, 0.0, 0.0)))
    summary = logic.drawLine(applied.volume, applied.seg, ends, device="cpu")
    (new_id,) = summary.updatedIds
    assert new_id == "L1"
    _assert_engine_result(logic, engine, applied, summary, NodePrompts(new_id, line=ends))
    segment = applied.seg.GetSegmentation().GetSegment(logic.lymphNodeSegments(applied.seg)[new_id])
    assert segment.GetName() == "LN L1"
    assert list(logic.tableRows(applied.table)) == [applied.node, "L1"]
    line = prompt_markups.promptNode(applied.seg, new_id, prompt_markups.LINE)
    assert line.GetName() == "LN L1 long axis" and prompt_markups.drewNode(applied.seg, new_id)

    # The node drawn by a line has no seed of its own: clicks refine its line's mask.
    click = _near(seed, (0.0, 2.0, 0.0))
    summary = logic.addClick(applied.volume, applied.seg, new_id, click, device="cpu")
    _assert_engine_result(logic, engine, applied, summary, NodePrompts(new_id, line=ends, clicks=(Click(click, True),)))

    logic.undo(applied.seg, new_id)
    line_text = logic.undo(applied.seg, new_id)
    assert "removed" in line_text
    assert new_id not in logic.lymphNodeSegments(applied.seg)
    assert prompt_markups.promptNodes(applied.seg, new_id) == []
    assert _state(logic, applied, applied.node) == before  # the table back as Apply left it


def test_a_line_reshapes_a_node_and_a_second_line_replaces_the_first(applied, phantom, logic, engine):
    seed = np.asarray(phantom.nodes[0].seed_ras)
    first = (_near(seed, (-5.0, -1.0, 0.0)), _near(seed, (5.0, 1.0, 0.0)))
    summary = logic.drawLine(applied.volume, applied.seg, first, nodeId=applied.node, device="cpu")
    _assert_engine_result(logic, engine, applied, summary, NodePrompts(applied.node, seed=applied.seed, line=first))
    after_first = _state(logic, applied, applied.node)
    second = (_near(seed, (-7.0, 0.0, 0.0)), _near(seed, (7.0, 0.0, 0.0)))
    summary = logic.drawLine(applied.volume, applied.seg, second, nodeId=applied.node, device="cpu")
    _assert_engine_result(logic, engine, applied, summary, NodePrompts(applied.node, seed=applied.seed, line=second))
    lines = [n for n in prompt_markups.promptNodes(applied.seg, applied.node) if n.IsA("vtkMRMLMarkupsLineNode")]
    assert len(lines) == 1 and prompt_markups.lineOf(lines[0]) == second
    assert not prompt_markups.drewNode(applied.seg, applied.node)

    logic.undo(applied.seg, applied.node)
    assert prompt_markups.lineOf(lines[0]) == first and _state(logic, applied, applied.node) == after_first
    logic.undo(applied.seg, applied.node)
    assert prompt_markups.promptNode(applied.seg, applied.node, prompt_markups.LINE) is None


def test_a_line_draws_the_first_node_of_a_ct_without_segmentation(mrml_scene, phantom, logic):
    import slicer

    logic.refinements.clear()
    volume = slicer.util.addVolumeFromArray(np.round(phantom.image).astype(np.int16),
                                            phantom.geometry.ijk_to_ras, name="CT")
    seed = np.asarray(phantom.nodes[1].seed_ras)
    summary = logic.drawLine(volume, None, (_near(seed, (0.0, -6.0, 0.0)), _near(seed, (0.0, 6.0, 0.0))),
                             device="cpu")
    assert summary.updatedIds == ["L1"] and list(logic.tableRows(summary.tableNode)) == ["L1"]
    assert summary.segmentationNode.GetNodeReference(
        summary.segmentationNode.GetReferenceImageGeometryReferenceRole()) is volume
    logic.undo(summary.segmentationNode, "L1")
    assert logic.lymphNodeSegments(summary.segmentationNode) == {}
    assert logic.tableRows(summary.tableNode) == {}


# --- a segment edited by hand ------------------------------------------------------------------------
def _edit_by_hand(logic, applied):
    import slicer

    segment_id = logic.lymphNodeSegments(applied.seg)[applied.node]
    mask = logic.segmentMask(applied.seg, segment_id, applied.volume)
    mask[:, :, : int(np.flatnonzero(mask.any(axis=(0, 1))).mean())] = False  # the radiologist cuts half
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype(np.uint8), applied.seg, segment_id, applied.volume)
    assert logic.isSegmentEdited(applied.seg, segment_id, applied.volume)
    return mask


def test_a_hand_edited_segment_is_replaced_only_when_confirmed(applied, phantom, logic):
    edited = _edit_by_hand(logic, applied)
    before = _state(logic, applied, applied.node)
    click = _near(phantom.nodes[0].seed_ras, (2.0, 0.0, 0.0))

    # The plan says a yes is needed; without it nothing changes and the point is taken away.
    clicks = prompt_markups.clickList(applied.seg, applied.node)
    change = node_refinement.clickChange(clicks, clicks.AddControlPointWorld(*click), True)
    plan = logic.planPrompt(applied.volume, applied.seg, applied.table, applied.node, change)
    assert "edited by hand" in plan.confirmation and "Undo" in plan.confirmation
    with pytest.raises(node_refinement.ConfirmationNeeded, match="nothing was replaced"):
        logic.startRefinement(plan, device="cpu")
    with pytest.raises(node_refinement.ConfirmationNeeded):
        logic.addClick(applied.volume, applied.seg, applied.node, click, device="cpu")
    assert _state(logic, applied, applied.node) == before and _clicks(applied, applied.node) == []

    # With the yes it is replaced, and Undo brings the hand edit back (still an edit).
    logic.addClick(applied.volume, applied.seg, applied.node, click, device="cpu", replaceEdited=True)
    segment_id = logic.lymphNodeSegments(applied.seg)[applied.node]
    assert not logic.isSegmentEdited(applied.seg, segment_id, applied.volume)
    logic.undo(applied.seg, applied.node)
    assert _state(logic, applied, applied.node) == before
    assert np.array_equal(logic.segmentMask(applied.seg, segment_id, applied.volume), edited)
    assert logic.isSegmentEdited(applied.seg, segment_id, applied.volume)


def test_undo_asks_before_it_replaces_an_edit_made_after_the_refinement(applied, phantom, logic):
    before = _state(logic, applied, applied.node)
    logic.addClick(applied.volume, applied.seg, applied.node, _near(phantom.nodes[0].seed_ras, (2.0, 0.0, 0.0)),
                   device="cpu")
    _edit_by_hand(logic, applied)
    edited = _state(logic, applied, applied.node)
    plan = logic.planUndo(applied.seg, applied.node)
    assert "edited by hand" in plan.confirmation
    with pytest.raises(node_refinement.ConfirmationNeeded, match="nothing was undone"):
        logic.undo(applied.seg, applied.node, plan=plan)
    assert _state(logic, applied, applied.node) == edited
    logic.undo(applied.seg, applied.node, replaceEdited=True)
    assert _state(logic, applied, applied.node) == before


def test_undo_asks_before_it_replaces_a_node_that_apply_segmented_again(applied, phantom, logic):
    seed = np.asarray(phantom.nodes[0].seed_ras)
    logic.addClick(applied.volume, applied.seg, applied.node, _near(seed, (2.0, 0.0, 0.0)), device="cpu")
    applied.seeds.SetNthControlPointPositionWorld(0, *_near(seed, (1.5, 0.0, 0.0)))  # the seed moved: Apply again
    assert logic.process(applied.volume, applied.seeds, applied.seg, applied.table, device="cpu").updatedIds == [
        applied.node]
    assert "segmented again" in logic.planUndo(applied.seg, applied.node).confirmation


# --- failures change nothing ---------------------------------------------------------------------------
def _markups_counts(scene):
    return {c: scene.GetNumberOfNodesByClass(c) for c in
            ("vtkMRMLMarkupsFiducialNode", "vtkMRMLMarkupsLineNode", "vtkMRMLSegmentationNode", "vtkMRMLTableNode")}


def test_a_refused_token_or_a_prompt_outside_the_ct_changes_nothing(applied, phantom, logic, mrml_scene):
    logic.addClick(applied.volume, applied.seg, applied.node, _near(phantom.nodes[0].seed_ras, (2.0, 0.0, 0.0)),
                   device="cpu")
    before, counts, clicks = _state(logic, applied, applied.node), _markups_counts(mrml_scene), _clicks(
        applied, applied.node)

    remote = lnmtl.LymphNodeMTLLogic()
    remote.setServer(logic.localServer().url, "not-the-token")
    with pytest.raises(JobFailed, match="refused"):
        remote.addClick(applied.volume, applied.seg, applied.node, _near(phantom.nodes[0].seed_ras, (0, 2.0, 0)))
    seed = np.asarray(phantom.nodes[1].seed_ras)
    with pytest.raises(JobFailed, match="token"):
        remote.drawLine(applied.volume, applied.seg, (_near(seed, (-5, 0, 0)), _near(seed, (5, 0, 0))))
    with pytest.raises(InputError, match="outside the CT"):
        logic.addClick(applied.volume, applied.seg, applied.node, (900.0, 0.0, 0.0), device="cpu")
    with pytest.raises(InputError, match="zero length"):
        logic.drawLine(applied.volume, applied.seg, (tuple(seed), tuple(seed)), device="cpu")
    assert _state(logic, applied, applied.node) == before and _markups_counts(mrml_scene) == counts
    assert _clicks(applied, applied.node) == clicks
    assert logic.refinements.count(applied.seg, applied.node) == 1 and remote.refinements.steps == {}


def test_a_cancelled_job_or_one_whose_segment_changed_meanwhile_changes_nothing(applied, phantom, logic):
    before = _state(logic, applied, applied.node)
    click = _near(phantom.nodes[0].seed_ras, (2.0, 0.0, 0.0))

    job = logic.addClick(applied.volume, applied.seg, applied.node, click, device="cpu", waitForCompletion=False)
    job.cancel()
    with pytest.raises(JobCancelled):
        logic.waitForJob(job)
    assert _state(logic, applied, applied.node) == before
    assert prompt_markups.promptNode(applied.seg, applied.node, prompt_markups.CLICKS) is None  # made for it

    job = logic.addClick(applied.volume, applied.seg, applied.node, click, device="cpu", waitForCompletion=False)
    end = time.monotonic() + 120
    while job.serverJob.state != "polling" and not job.finished:
        assert time.monotonic() < end
        job.tick()
    edited = _edit_by_hand(logic, applied)  # the radiologist edits while the server works
    with pytest.raises(JobFailed, match="changed while it was being refined"):
        logic.waitForJob(job)
    segment_id = logic.lymphNodeSegments(applied.seg)[applied.node]
    assert np.array_equal(logic.segmentMask(applied.seg, segment_id, applied.volume), edited)
    assert _state(logic, applied, applied.node)[1] == before[1] and _clicks(applied, applied.node) == []
    assert logic.refinements.count(applied.seg, applied.node) == 0


# --- the record survives a saved scene ----------------------------------------------------------------
def test_the_prompt_record_survives_a_saved_scene(applied, phantom, logic, mrml_scene, tmp_path):
    seed = np.asarray(phantom.nodes[0].seed_ras)
    logic.drawLine(applied.volume, applied.seg, (_near(seed, (-5, 0, 0)), _near(seed, (5, 0, 0))),
                   nodeId=applied.node, device="cpu")
    logic.addClick(applied.volume, applied.seg, applied.node, _near(seed, (0, -8.0, 0)), positive=False, device="cpu")
    prompts = prompt_markups.nodePrompts(applied.seg, applied.node, applied.seed)
    write_scene_mrml(mrml_scene, tmp_path / "scene.mrml")
    read_scene_mrml(mrml_scene, tmp_path / "scene.mrml")
    seg = mrml_scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    read = prompt_markups.nodePrompts(seg, applied.node, applied.seed)
    assert len(prompts.clicks) == 1 and prompts.line is not None
    assert [c.positive for c in read.clicks] == [c.positive for c in prompts.clicks]
    assert read.seed == prompts.seed and read.box is None
    # positions as the .mrk.json files keep them (to the last digit or so)
    assert np.allclose(read.points(), prompts.points(), rtol=0, atol=1e-9)


# --- the Refine section: place mode, placed points, the question, Esc, Undo -------------------------------
class Field(types.SimpleNamespace):
    """A stand-in widget: attributes are its Qt properties; signal connections are recorded."""

    def connect(self, signal, slot):
        self.__dict__.setdefault("slots", {})[signal] = slot


@pytest.fixture
def controls(applied, logic, monkeypatch):
    import slicer

    answers, jobs, errors = [], [], []
    monkeypatch.setattr(lnmtl.qt.QTimer, "singleShot", staticmethod(lambda msec, call: call()), raising=False)
    monkeypatch.setattr(slicer.util, "mainWindow", lambda: None, raising=False)
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", _record_errors(errors), raising=False)
    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay", lambda text, **k: answers.pop(0), raising=False)
    ui = types.SimpleNamespace(
        positivePointButton=Field(checked=False, enabled=False),
        negativePointButton=Field(checked=False, enabled=False),
        longAxisButton=Field(checked=False, text=""), newNodeButton=Field(), undoButton=Field(enabled=False),
        refineNodeLabel=Field(text=""), statusLabel=Field(text=""), resultsTableView=Field())
    ui.resultsTableView.setMRMLTableNode = lambda node: None
    parameters = lnmtl.LymphNodeMTLParameterNode(None)
    parameters.inputVolume, parameters.outputSegmentation = applied.volume, applied.seg
    parameters.outputTable = applied.table
    parameters.device = "cpu"

    def start_job(job, show, text):
        jobs.append(text)
        ui.statusLabel.text = show(logic.waitForJob(job))  # the widget's timer, run to the end

    refine = RefineControls(ui, logic, lambda: parameters, lambda: True, start_job, lambda: False)
    yield types.SimpleNamespace(refine=refine, ui=ui, answers=answers, jobs=jobs, errors=errors, parameters=parameters)
    refine.cleanup()


def _record_errors(errors):
    @contextlib.contextmanager
    def display(message, **kwargs):
        try:
            yield
        except Exception as error:  # shown in a dialog in Slicer
            errors.append(f"{message} {error}")

    return display


def _place(node, ras):
    node.AddControlPointWorld(*ras)  # what a click in a slice view does in place mode


def test_the_refine_section_places_points_asks_before_replacing_an_edit_and_undoes(
        applied, phantom, logic, controls, mrml_scene):
    refine, ui = controls.refine, controls.ui
    assert ui.refineNodeLabel.text.startswith("None") and not ui.positivePointButton.enabled
    refine.placePoint(True)  # no node picked: one line, no place mode
    assert "Pick a node" in ui.statusLabel.text and refine._placing is None

    refine.follow(applied.node)
    assert ui.refineNodeLabel.text == f"Node {applied.node}" and ui.positivePointButton.enabled
    refine.placePoint(True)
    interaction = mrml_scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    clicks = prompt_markups.promptNode(applied.seg, applied.node, prompt_markups.CLICKS)
    assert interaction.GetCurrentInteractionMode() == interaction.Place and ui.positivePointButton.checked
    assert slicer_active_list() == clicks.GetID()
    before = _state(logic, applied, applied.node)

    seed = np.asarray(phantom.nodes[0].seed_ras)
    _place(clicks, _near(seed, (2.0, 0.0, 0.0)))
    assert len(controls.jobs) == 1 and f"Node {applied.node} refined" in ui.statusLabel.text
    assert ui.undoButton.enabled and _state(logic, applied, applied.node) != before
    refine.toggleSign()  # T: the next points are negative, place mode goes on
    assert ui.negativePointButton.checked and not ui.positivePointButton.checked
    _place(clicks, _near(seed, (-9.0, 0.0, 0.0)))
    assert [positive for _ras, positive in _clicks(applied, applied.node)] == [True, False]

    refine.undo()  # Ctrl+Z
    refine.undo()
    assert _state(logic, applied, applied.node) == before and not ui.undoButton.enabled

    edited = _edit_by_hand(logic, applied)
    controls.answers.append(False)  # "Replace your edit?" -> No
    _place(clicks, _near(seed, (2.0, 0.0, 0.0)))
    assert "edit is kept" in ui.statusLabel.text and _clicks(applied, applied.node) == []
    segment_id = logic.lymphNodeSegments(applied.seg)[applied.node]
    assert np.array_equal(logic.segmentMask(applied.seg, segment_id, applied.volume), edited)
    assert len(controls.jobs) == 2 and controls.errors == []

    interaction.SwitchToViewTransformMode()  # Esc
    assert refine._placing is None and not ui.positivePointButton.checked and not ui.negativePointButton.checked


def test_the_refine_section_draws_a_new_node_with_a_long_axis(applied, phantom, logic, controls, mrml_scene):
    refine, ui = controls.refine, controls.ui
    refine.newNode()  # E
    assert ui.longAxisButton.text == "Long axis (new node)"
    refine.placeLine()  # L
    line = refine._placing
    assert line.IsA("vtkMRMLMarkupsLineNode") and ui.longAxisButton.checked
    seed = np.asarray(phantom.nodes[1].seed_ras)
    _place(line, _near(seed, (-6.0, 0.0, 0.0)))
    assert controls.jobs == []  # one end: still drawing
    _place(line, _near(seed, (6.0, 0.0, 0.0)))
    assert controls.jobs == ["Refining node L1..."] and refine.nodeId == "L1"
    assert ui.refineNodeLabel.text == "Node L1" and ui.longAxisButton.text == "Long axis (reshape)"
    assert "L1" in logic.lymphNodeSegments(applied.seg) and not ui.longAxisButton.checked

    refine.placeLine()  # a line left half drawn is removed when placing stops
    half = refine._placing
    _place(half, _near(seed, (-6.0, 1.0, 0.0)))
    refine.stopPlacing()
    assert half.GetScene() is None and controls.errors == []
    refine.undo()
    assert refine.nodeId is None and "L1" not in logic.lymphNodeSegments(applied.seg)


def slicer_active_list():
    import slicer

    return slicer.modules.markups.logic().GetActiveListID()
