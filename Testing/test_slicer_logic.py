"""The module's Logic on real MRML (slicer-core) against a real local inference server process
(loopback, bundled model, CPU): the real LymphNodeMTL/LymphNodeMTL.py is imported through thin
stand-ins for the Slicer application, and its results are compared with the engine run directly.

Apply -> one segmentation + one table node matching the engine's NodeResults; Re-classify changes
only edited nodes and never a mask; new seeds are processed alone; edited segments survive Apply
unless overwriteEdited; the scene survives .mrml and .mrb round trips; export files; self-test.
"""

import csv
import math
import types

import numpy as np
import pytest
from slicer_harness import (
    enable_mrb_reading,
    import_slicer_or_skip,
    read_scene_mrml,
    segment_tag,
    write_scene_mrml,
)

import_slicer_or_skip()
import slicer_module_stubs  # noqa: E402
from LymphNodeMTLLib.core.case import Case, Seed  # noqa: E402
from LymphNodeMTLLib.core.mask_checksum import mask_checksum  # noqa: E402
from LymphNodeMTLLib.core.segment_tags import (  # noqa: E402
    LYMPH_NODE_TERMINOLOGY,
    TAG_MASK_HASH,
    TAG_MODEL_ID,
    TAG_PROBABILITY,
    TAG_SEED_ID,
    TAG_SEED_RAS,
    TERMINOLOGY_TAG,
    segment_tags,
)
from LymphNodeMTLLib.outputs import results_table as csv_table  # noqa: E402
from LymphNodeMTLLib.outputs import segmentation_writer as segw  # noqa: E402
from LymphNodeMTLLib.phantoms.case_generator import generate_phantom_case  # noqa: E402
from LymphNodeMTLSlicerLib import node_segments, results_table  # noqa: E402
from dicom_seg_masks import read_dicom_seg_masks  # noqa: E402
from results_csv import read_results_csv  # noqa: E402

lnmtl = slicer_module_stubs.import_module_file()

N_NODES = 3


@pytest.fixture(scope="module")
def phantom():
    """A small phantom CT (112 x 112 x 80 mm) with three nodes; generated once."""
    return generate_phantom_case(np.random.default_rng(11), N_NODES, spacing=(1.0, 1.0, 2.0),
                                 direction=np.eye(3), field_of_view_mm=(112.0, 112.0, 80.0))


@pytest.fixture(scope="module")
def logic():
    """One Logic for the whole file; its local server (bundled model, CPU) stays warm."""
    return lnmtl.LymphNodeMTLLogic()


@pytest.fixture(scope="module")
def engine():
    """The same bundled model run in this process: what the server's answers are compared with."""
    from LymphNodeMTLLib.inference.engine import NodeEngine
    from LymphNodeMTLLib.network.model_store import default_model_dir

    return NodeEngine(default_model_dir(), "cpu")


def _add_inputs(phantom, seeds=None, labels=True):
    import slicer

    volume = slicer.util.addVolumeFromArray(np.round(phantom.image).astype(np.int16),
                                            phantom.geometry.ijk_to_ras, name="Phantom CT")
    markups = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Seeds")
    for node in phantom.nodes[:seeds]:
        index = markups.AddControlPoint(*node.seed_ras, node.node_id)
        if not labels:
            markups.SetNthControlPointLabel(index, "")  # Slicer would name it "Seeds-1"
    return volume, markups


def _segments(segmentation_node, logic):
    segmentation = segmentation_node.GetSegmentation()
    return {node_id: segmentation.GetSegment(sid) for node_id, sid in
            logic.lymphNodeSegments(segmentation_node).items()}


def _masks(segmentation_node, volume, logic):
    return {node_id: logic.segmentMask(segmentation_node, sid, volume)
            for node_id, sid in logic.lymphNodeSegments(segmentation_node).items()}


def _erase_half(segmentation_node, volume, logic, node_id):
    """The radiologist's edit: drop the far half of the node's mask along its longest extent."""
    import slicer

    segment_id = logic.lymphNodeSegments(segmentation_node)[node_id]
    mask = lnmtl.LymphNodeMTLTest.eraseHalf(logic.segmentMask(segmentation_node, segment_id, volume))
    assert mask.any(), "the edit must leave a non-empty mask"
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask.astype(np.uint8), segmentation_node,
                                                     segment_id, volume)
    return mask


def _same_row(a, b):
    return a.keys() == b.keys() and all(
        (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a)


# --- Apply ---------------------------------------------------------------------------------------
def test_process_makes_one_segment_and_one_row_per_seed(mrml_scene, phantom, logic, engine):
    import slicer

    volume, markups = _add_inputs(phantom)
    summary = logic.process(volume, markups, device="cpu")
    seg_node, table_node = summary.segmentationNode, summary.tableNode
    ids = [n.node_id for n in phantom.nodes]
    assert summary.updatedIds == ids
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1
    assert seg_node.GetNodeReference(seg_node.GetReferenceImageGeometryReferenceRole()) is volume

    segments = _segments(seg_node, logic)
    masks = _masks(seg_node, volume, logic)
    rows = logic.tableRows(table_node)
    assert list(segments) == ids and list(rows) == ids
    labels = engine.config.labels
    direct = {r.node_id: r for r in engine.predict(logic.caseFromNodes(volume, markups))}
    for result in summary.results:
        segment = segments[result.node_id]
        assert segment.GetName() == f"LN {result.node_id}"
        assert "59441001" in segment.GetTerminology()
        # The module's own terminology list, with the codes the Lib's writers use.
        assert segment.GetTerminology() == lnmtl.MODULE_TERMINOLOGY
        assert segment.GetTerminology().split("~")[1:] == LYMPH_NODE_TERMINOLOGY.split("~")[1:]
        assert segment.GetColor() == pytest.approx(segw.probability_color(result.probability))
        assert result.model.model_id == engine.model_id
        assert result.model.weights_sha256 == engine.model.weights_sha256
        for key, value in segment_tags(result).items():
            if key != TERMINOLOGY_TAG:
                assert segment_tag(segment, key) == value, key
        # The server's answer is the engine's own.
        assert np.array_equal(result.full_mask(phantom.image.shape),
                              direct[result.node_id].full_mask(phantom.image.shape))
        assert result.probability == pytest.approx(direct[result.node_id].probability, abs=1e-6)
        assert segment_tag(segment, TAG_MASK_HASH) == mask_checksum(masks[result.node_id])
        assert np.array_equal(masks[result.node_id], result.full_mask(phantom.image.shape))
        row = rows[result.node_id]
        assert row["probability"] == pytest.approx(result.probability, abs=5e-5)
        assert row["label"] == labels[result.predicted_label]
        assert row["volume_mm3"] == pytest.approx(result.volume_mm3, abs=0.005)
        assert row["short_axis_mm"] == pytest.approx(result.short_axis_mm, abs=0.005)
        assert row["long_axis_mm"] == pytest.approx(result.long_axis_mm, abs=0.005)
        assert row["mean_hu"] == pytest.approx(result.mean_hu, abs=0.05, nan_ok=True)
    assert [table_node.GetColumnName(c) for c in range(table_node.GetNumberOfColumns())] == [
        "id", "status", "probability", "probability_low", "probability_high", "label", "mask_agreement",
        "volume_mm3", "short_axis_mm", "long_axis_mm", "mean_hu"]
    # Column names are the header, not a first data row that would look up a node called "id".
    assert table_node.GetUseColumnTitleAsColumnHeader()
    assert [table_node.GetCellText(r, 0) for r in range(table_node.GetNumberOfRows())] == ids

    # Outputs sit next to the CT in the subject hierarchy (same parent: the CT's study).
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml_scene)
    parent = sh.GetItemParent(sh.GetItemByDataNode(volume))
    for node in (seg_node, table_node):
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == parent


def test_case_from_nodes_uses_world_coordinates_and_point_index_for_unlabelled_seeds(
        mrml_scene, phantom, logic):
    import slicer

    volume, markups = _add_inputs(phantom, labels=False)
    case = logic.caseFromNodes(volume, markups)
    assert case.geometry.same_grid(phantom.geometry)
    assert [s.node_id for s in case.seeds] == [str(i + 1) for i in range(N_NODES)]
    assert np.allclose(case.seed_array(), [n.seed_ras for n in phantom.nodes], atol=1e-6)

    # An unchanged CT gives the same array (the engine keeps its device copy); an edited one not.
    assert logic.caseFromNodes(volume).image is case.image
    slicer.util.arrayFromVolume(volume)[0, 0, 0] += 1
    slicer.util.arrayFromVolumeModified(volume)
    edited = logic.caseFromNodes(volume).image
    assert edited is not case.image and edited[0, 0, 0] == case.image[0, 0, 0] + 1

    # Under a linear transform both the CT and the seeds move: the case is in world RAS.
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[:3, 3] = (10.0, -5.0, 3.0)
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    markups.SetAndObserveTransformNodeID(transform.GetID())
    moved = logic.caseFromNodes(volume, markups)
    assert np.allclose(moved.geometry.ijk_to_ras, shift @ phantom.geometry.ijk_to_ras)
    assert np.allclose(moved.seed_array(), case.seed_array() + shift[:3, 3])


@pytest.mark.parametrize("direction", [np.diag([-1.0, -1.0, 1.0]),  # LPS-like flip
                                       np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
                                       None])  # oblique
def test_masks_land_on_the_ct_voxels_for_any_orientation(mrml_scene, logic, direction):
    """A NodeResult's bounding-box mask is written onto exactly its CT voxels, and read back."""
    import slicer
    from LymphNodeMTLLib.core.node_result import NodeResult

    if direction is None:
        angle = np.deg2rad(20.0)
        direction = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0],
                              [0.0, 0.0, 1.0]])
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = direction * np.array([0.7, 0.9, 2.5])
    ijk_to_ras[:3, 3] = (12.0, -30.0, 5.0)
    volume = slicer.util.addVolumeFromArray(np.zeros((12, 20, 24), np.int16), ijk_to_ras, name="CT")
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    mask = np.random.default_rng(3).random((4, 6, 5)) > 0.4
    result = NodeResult("7", (0.0, 0.0, 0.0), (3, 9, 2), (7, 15, 7), mask, probability=0.8)
    segment_id = node_segments.writeSegment(segmentation, volume, result, lnmtl.MODULE_TERMINOLOGY)
    assert np.array_equal(logic.segmentMask(segmentation, segment_id, volume), result.full_mask((12, 20, 24)))
    assert segment_tag(segmentation.GetSegmentation().GetSegment(segment_id), TAG_MASK_HASH) == \
        mask_checksum(result.full_mask((12, 20, 24)))


# --- Re-classify ---------------------------------------------------------------------------------
def test_reclassify_updates_only_the_edited_node_and_never_a_mask(mrml_scene, phantom, logic, engine):
    volume, markups = _add_inputs(phantom)
    summary = logic.process(volume, markups, device="cpu")
    seg_node, table_node = summary.segmentationNode, summary.tableNode
    edited_id = phantom.nodes[1].node_id
    edited = _erase_half(seg_node, volume, logic, edited_id)
    masks_before = _masks(seg_node, volume, logic)
    rows_before = logic.tableRows(table_node)
    hash_before = segment_tag(_segments(seg_node, logic)[edited_id], TAG_MASK_HASH)

    re = logic.reclassify(volume, seg_node, table_node, device="cpu")

    assert re.updatedIds == [edited_id]
    masks_after = _masks(seg_node, volume, logic)
    assert all(np.array_equal(masks_before[k], masks_after[k]) for k in masks_before)
    assert np.array_equal(masks_after[edited_id], edited)
    rows_after = logic.tableRows(table_node)
    for node_id in rows_before:
        if node_id != edited_id:
            assert _same_row(rows_after[node_id], rows_before[node_id]), node_id
    (result,) = re.results
    assert rows_after[edited_id]["volume_mm3"] == pytest.approx(result.volume_mm3, abs=0.005)
    assert rows_after[edited_id]["volume_mm3"] < rows_before[edited_id]["volume_mm3"]
    assert rows_after[edited_id]["probability"] == pytest.approx(result.probability, abs=5e-5)
    segment = _segments(seg_node, logic)[edited_id]
    assert segment_tag(segment, TAG_PROBABILITY) == f"{result.probability:.4f}"
    assert segment.GetColor() == pytest.approx(segw.probability_color(result.probability))
    # The recorded checksum is still the engine's mask: the segment stays marked as edited.
    assert segment_tag(segment, TAG_MASK_HASH) == hash_before
    assert logic.isSegmentEdited(seg_node, logic.lymphNodeSegments(seg_node)[edited_id], volume)

    # Same answer as the engine given the same mask directly.
    case = logic.caseFromNodes(volume)
    direct = engine.classify_masks(case, [result])[0]
    assert direct.probability == pytest.approx(result.probability, abs=1e-6)


# --- Apply again ---------------------------------------------------------------------------------
def test_adding_a_seed_processes_only_the_new_node(mrml_scene, phantom, logic):
    volume, markups = _add_inputs(phantom, seeds=N_NODES - 1)
    first = logic.process(volume, markups, device="cpu")
    seg_node, table_node = first.segmentationNode, first.tableNode
    masks_before = _masks(seg_node, volume, logic)
    tags_before = {k: {t: segment_tag(s, t) for t in (TAG_PROBABILITY, TAG_MASK_HASH)}
                   for k, s in _segments(seg_node, logic).items()}
    rows_before = logic.tableRows(table_node)

    new = phantom.nodes[-1]
    markups.AddControlPoint(*new.seed_ras, new.node_id)
    second = logic.process(volume, markups, seg_node, table_node, device="cpu")

    assert second.updatedIds == [new.node_id]
    assert second.keptIds == list(masks_before)
    assert seg_node.GetSegmentation().GetNumberOfSegments() == N_NODES
    masks_after = _masks(seg_node, volume, logic)
    for node_id, mask in masks_before.items():
        assert np.array_equal(masks_after[node_id], mask), node_id
        segment = _segments(seg_node, logic)[node_id]
        assert {t: segment_tag(segment, t) for t in tags_before[node_id]} == tags_before[node_id]
    rows_after = logic.tableRows(table_node)
    assert list(rows_after) == [n.node_id for n in phantom.nodes]
    for node_id in rows_before:
        assert _same_row(rows_after[node_id], rows_before[node_id])

    # Nothing new: Apply does no work and changes nothing.
    third = logic.process(volume, markups, seg_node, table_node, device="cpu")
    assert third.updatedIds == [] and third.keptIds == [n.node_id for n in phantom.nodes]


def test_edited_segment_is_kept_unless_overwrite_edited(mrml_scene, phantom, logic, engine):
    volume, markups = _add_inputs(phantom)
    first = logic.process(volume, markups, device="cpu")
    seg_node, table_node = first.segmentationNode, first.tableNode
    edited_id, moved_id = phantom.nodes[0].node_id, phantom.nodes[2].node_id
    edited = _erase_half(seg_node, volume, logic, edited_id)

    # Move both the edited node's seed and an unedited node's seed by 1 mm.
    for index in (0, 2):
        ras = np.add(phantom.nodes[index].seed_ras, (1.0, 0.0, 0.0))
        markups.SetNthControlPointPosition(index, *ras)
    kept = logic.process(volume, markups, seg_node, table_node, device="cpu")
    assert kept.keptEditedIds == [edited_id]
    assert kept.updatedIds == [moved_id]  # unedited + moved: predicted again from the new seed
    assert np.array_equal(logic.segmentMask(seg_node, logic.lymphNodeSegments(seg_node)[edited_id], volume),
                          edited)
    assert seg_node.GetSegmentation().GetNumberOfSegments() == N_NODES

    # Put the seed back; overwriteEdited replaces the edit with the engine's mask for that seed
    # (predicted alone: only the nodes being predicted are made disjoint by the engine).
    markups.SetNthControlPointPosition(0, *phantom.nodes[0].seed_ras)
    still = logic.process(volume, markups, seg_node, table_node, device="cpu")
    assert still.updatedIds == [] and edited_id in still.keptIds
    restored = logic.process(volume, markups, seg_node, table_node, device="cpu", overwriteEdited=True)
    assert restored.updatedIds == [edited_id]
    segment_id = logic.lymphNodeSegments(seg_node)[edited_id]
    ct = logic.caseFromNodes(volume)
    (expected,) = engine.predict(
        Case(ct.image, ct.geometry, [Seed(edited_id, phantom.nodes[0].seed_ras)]))
    restored_mask = logic.segmentMask(seg_node, segment_id, volume)
    assert np.array_equal(restored_mask, expected.full_mask(phantom.image.shape))
    assert not np.array_equal(restored_mask, edited)
    assert not logic.isSegmentEdited(seg_node, segment_id, volume)
    assert seg_node.GetSegmentation().GetNumberOfSegments() == N_NODES
    assert table_node.GetNumberOfRows() == N_NODES


# --- scene files ---------------------------------------------------------------------------------
def _scene_state(logic, volume_name="Phantom CT"):
    import slicer

    volume = slicer.util.getFirstNodeByName(volume_name)
    (seg_node,) = slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
    (table_node,) = slicer.util.getNodesByClass("vtkMRMLTableNode")
    keys = (TAG_SEED_ID, TAG_SEED_RAS, TAG_PROBABILITY, TAG_MODEL_ID, TERMINOLOGY_TAG, TAG_MASK_HASH)
    segments = {k: (s.GetName(), {t: segment_tag(s, t) for t in keys})
                for k, s in _segments(seg_node, logic).items()}
    assert table_node.GetNodeReference(results_table.TABLE_SEGMENTATION_REFERENCE) is seg_node
    return (segments, _masks(seg_node, volume, logic), logic.tableRows(table_node))


def _assert_same_state(a, b):
    assert a[0] == b[0]
    assert a[1].keys() == b[1].keys() and all(np.array_equal(a[1][k], b[1][k]) for k in a[1])
    assert a[2].keys() == b[2].keys() and all(_same_row(a[2][k], b[2][k]) for k in a[2])


def test_scene_survives_mrml_and_mrb_round_trips(mrml_scene, phantom, logic, tmp_path):
    import slicer

    volume, markups = _add_inputs(phantom)
    summary = logic.process(volume, markups, device="cpu")
    _erase_half(summary.segmentationNode, volume, logic, phantom.nodes[0].node_id)
    logic.reclassify(volume, summary.segmentationNode, summary.tableNode, device="cpu")
    state = _scene_state(logic)

    mrb = tmp_path / "scene.mrb"
    assert mrml_scene.WriteToMRB(str(mrb))
    write_scene_mrml(mrml_scene, tmp_path / "mrml" / "scene.mrml")

    read_scene_mrml(mrml_scene, tmp_path / "mrml" / "scene.mrml")
    _assert_same_state(_scene_state(logic), state)
    _check_reloaded_scene_still_works(logic)

    mrml_scene.Clear(False)
    managers = enable_mrb_reading(mrml_scene, tmp_path / "cache")  # noqa: F841 (kept alive)
    assert mrml_scene.ReadFromMRB(str(mrb))
    _assert_same_state(_scene_state(logic), state)
    assert slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode")


def _check_reloaded_scene_still_works(logic):
    """Edits are still recognised after reloading, and Apply has nothing to do."""
    import slicer

    volume = slicer.util.getFirstNodeByName("Phantom CT")
    (seg_node,) = slicer.util.getNodesByClass("vtkMRMLSegmentationNode")
    (markups,) = slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode")
    edited = [k for k, sid in logic.lymphNodeSegments(seg_node).items()
              if logic.isSegmentEdited(seg_node, sid, volume)]
    assert len(edited) == 1
    again = logic.process(volume, markups, seg_node, device="cpu")
    assert again.updatedIds == [] and again.keptEditedIds == []


# --- navigation and export -----------------------------------------------------------------------
def test_jump_to_node_centres_on_the_segment_and_selects_it(mrml_scene, phantom, logic):
    volume, markups = _add_inputs(phantom)
    summary = logic.process(volume, markups, device="cpu")
    editor = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    row = 1
    node_id = summary.tableNode.GetCellText(row, 0)
    segment_id, centre = logic.jumpToNode(summary.tableNode, row)
    assert segment_id == logic.lymphNodeSegments(summary.segmentationNode)[node_id]
    mask = logic.segmentMask(summary.segmentationNode, segment_id, volume)
    voxels = np.argwhere(mask)
    box_centre_kji = (voxels.min(axis=0) + voxels.max(axis=0)) / 2.0  # Slicer: centre of the extent
    centre_kji = phantom.geometry.ras_to_ijk_points(centre)[0][::-1]
    assert np.all(np.abs(centre_kji - box_centre_kji) <= 0.5 + 1e-6)  # Slicer rounds to a voxel
    assert editor.GetSelectedSegmentID() == segment_id
    assert editor.GetSegmentationNode() is summary.segmentationNode


def test_export_writes_segmentation_and_table_files(mrml_scene, phantom, logic, tmp_path):
    volume, markups = _add_inputs(phantom)
    summary = logic.process(volume, markups, device="cpu")
    report = logic.exportResults(summary.segmentationNode, summary.tableNode, volume, tmp_path / "out")

    labelmap, geometry, segments = segw.read_segmentation(report["segmentation"])
    assert geometry.same_grid(phantom.geometry)
    by_id = {s["tags"][TAG_SEED_ID]: s for s in segments}
    assert list(by_id) == summary.updatedIds
    for result in summary.results:
        assert np.array_equal(segw.segment_mask(labelmap, by_id[result.node_id]),
                              result.full_mask(phantom.image.shape))
        assert by_id[result.node_id]["name"] == f"LN {result.node_id}"

    # The command line's nodes.csv: same columns, same writer, read back by the Lib's reader.
    with open(report["table"], newline="") as stream:
        assert next(csv.reader(stream)) == list(csv_table.COLUMNS)
    rows = read_results_csv(report["table"])
    assert [r["id"] for r in rows] == summary.updatedIds
    for row, result in zip(rows, summary.results):
        assert row["probability"] == pytest.approx(result.probability, abs=5e-5)
        assert row["predicted_label"] == result.predicted_label
        assert row["volume_mm3"] == pytest.approx(result.volume_mm3, abs=0.005)
        assert row["long_axis_mm"] == pytest.approx(result.long_axis_mm, abs=0.005)
        assert (row["seed_r"], row["seed_a"], row["seed_s"]) == pytest.approx(result.seed_ras, abs=0.0055)  # tag: 3 decimals
    # DICOM SEG: written by the Lib's writer when it and highdicom are there (here the CT is not
    # from DICOM, so it references a synthetic series); otherwise a message says why not.
    assert any("DICOM SEG" in m for m in report["messages"])
    if report["dicomSeg"] is not None:
        masks = read_dicom_seg_masks(report["dicomSeg"], phantom.geometry)
        for result in summary.results:
            assert np.array_equal(masks[f"LN {result.node_id}"], result.full_mask(phantom.image.shape))


# --- the local server stays warm -----------------------------------------------------------------
def test_local_server_stays_warm_between_runs(mrml_scene, phantom, logic):
    volume, markups = _add_inputs(phantom, seeds=1)
    first = logic.process(volume, markups, device="cpu")
    server = logic.localServer()
    pid = server.pid
    markups.AddControlPoint(*phantom.nodes[1].seed_ras, phantom.nodes[1].node_id)
    second = logic.process(volume, markups, first.segmentationNode, first.tableNode, device="cpu")
    assert second.updatedIds == [phantom.nodes[1].node_id]
    assert server.pid == pid and server.isAlive()


# --- module description, dependencies, self-test ---------------------------------------------------
def test_module_description(monkeypatch):
    import slicer

    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(connect=lambda *a: None), raising=False)
    parent = types.SimpleNamespace()
    lnmtl.LymphNodeMTL(parent)
    assert parent.categories == ["Segmentation"]
    assert parent.title and parent.contributors
    text = " ".join(parent.helpText.lower().split())
    assert "synthetic phantoms" in text and "not a clinical tool" in text


def test_module_self_test_runs(mrml_scene):
    """The ScriptedLoadableModuleTest that Slicer's test runner calls, on slicer-core MRML."""
    result = lnmtl.LymphNodeMTLTest("runTest").run()
    assert result.wasSuccessful(), [str(e[1]) for e in result.errors + result.failures]
    assert not result.skipped  # this Python has every package the local server needs


def test_module_self_test_skips_each_method_without_the_engine_packages(mrml_scene, monkeypatch):
    """ctest loads test methods by name: each one skips, with a message, when torch is missing."""
    from LymphNodeMTLSlicerLib import dependency_installer

    monkeypatch.setattr(dependency_installer, "installedVersion",
                        lambda name: None if name == "torch" else "99")
    for name in ("runTest", "test_PhantomEndToEnd"):
        result = lnmtl.LymphNodeMTLTest(name).run()
        assert result.wasSuccessful() and len(result.skipped) == 1, name
        assert "torch>=2.8" in result.skipped[0][1] and "Apply" in result.skipped[0][1]
