"""Going to a node: the slice views centred on its segment, and the segment selected in the Segment
Editor (which the Refine section follows)."""

import slicer
from LymphNodeMTLLib.core.errors import InputError

from . import node_segments, results_table


def jumpToNode(tableNode, row: int, segmentationNode=None):
    """Centre the slice views on the node in table row `row` and select its segment."""
    nodeId = results_table.nodeIdOfRow(tableNode, row)
    segmentationNode = segmentationNode or tableNode.GetNodeReference(results_table.TABLE_SEGMENTATION_REFERENCE)
    if segmentationNode is None:
        raise InputError("the table is not linked to a segmentation; run Apply again")
    return jumpToNodeId(segmentationNode, nodeId)


def nodeCentre(segmentationNode, nodeId: str):
    """(segment id, RAS centre) of the node's segment, or None when it has no segment; an empty
    segment (a node not found) is centred on its seed, where it was looked for."""
    segmentId = node_segments.lymphNodeSegments(segmentationNode).get(nodeId)
    if segmentId is None:
        return None
    center = segmentationNode.GetSegmentCenterRAS(segmentId)
    if center is None:
        center = node_segments.tagsOf(segmentationNode.GetSegmentation().GetSegment(segmentId)).seed_ras
    return segmentId, center


def jumpToNodeId(segmentationNode, nodeId: str):
    """Returns (segment id, RAS centre) of the node, or None when it has no segment."""
    found = nodeCentre(segmentationNode, nodeId)
    if found is None:
        return None
    segmentId, center = found
    markups = getattr(slicer.modules, "markups", None)
    if markups is not None and hasattr(markups.logic(), "JumpSlicesToLocation"):
        markups.logic().JumpSlicesToLocation(*center, True)
    for editorNode in slicer.util.getNodesByClass("vtkMRMLSegmentEditorNode"):
        if editorNode.GetSegmentationNode() in (segmentationNode, None):
            editorNode.SetAndObserveSegmentationNode(segmentationNode)
            editorNode.SetSelectedSegmentID(segmentId)
    return segmentId, tuple(center)


def selectedNodeId(segmentationNode):
    """The node whose segment is selected in a Segment Editor showing `segmentationNode`, or None."""
    for editorNode in slicer.util.getNodesByClass("vtkMRMLSegmentEditorNode"):
        segmentId = editorNode.GetSelectedSegmentID()
        if editorNode.GetSegmentationNode() is segmentationNode and segmentId:
            segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
            if segment is not None:
                return node_segments.tagsOf(segment).node_id
    return None
