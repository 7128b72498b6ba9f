"""The module's output nodes: one segmentation over the CT and its results table, found again or
created, and placed in the CT's study in the subject hierarchy."""

import slicer

from .results_table import TABLE_SEGMENTATION_REFERENCE


def newSegmentationNode(volumeNode):
    node = slicer.mrmlScene.AddNewNodeByClass(
        "vtkMRMLSegmentationNode", slicer.mrmlScene.GenerateUniqueName(f"{volumeNode.GetName()} lymph nodes"))
    node.CreateDefaultDisplayNodes()
    node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())  # overlay the CT exactly
    return node


def outputNodes(segmentationNode, tableNode, volumeNode):
    """The segmentation (new when None) on the CT's grid, and its table: the nodes a run writes."""
    if segmentationNode is None:
        segmentationNode = newSegmentationNode(volumeNode)
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    return segmentationNode, outputTable(tableNode, segmentationNode, volumeNode)


def linkedTable(segmentationNode):
    """The results table of the segmentation, or None."""
    return next((node for node in slicer.util.getNodesByClass("vtkMRMLTableNode")
                 if node.GetNodeReferenceID(TABLE_SEGMENTATION_REFERENCE) == segmentationNode.GetID()), None)


def outputTable(tableNode, segmentationNode, volumeNode):
    """The given table, else the one linked to the segmentation, else a new one."""
    if tableNode is None:
        tableNode = linkedTable(segmentationNode)
    return tableNode if tableNode is not None else slicer.mrmlScene.AddNewNodeByClass(
        "vtkMRMLTableNode", slicer.mrmlScene.GenerateUniqueName(f"{volumeNode.GetName()} lymph nodes table"))


def placeNextToVolume(volumeNode, *nodes) -> None:
    """Put `nodes` in the CT's study (its parent) in the subject hierarchy."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    if shNode is None:
        return
    volumeItem = shNode.GetItemByDataNode(volumeNode)
    if not volumeItem:
        volumeItem = shNode.CreateItem(shNode.GetSceneItemID(), volumeNode)
    parent = shNode.GetItemParent(volumeItem)
    for node in nodes:
        item = shNode.GetItemByDataNode(node)
        if not item:
            shNode.CreateItem(parent, node)
        elif shNode.GetItemParent(item) != parent:
            shNode.SetItemParent(item, parent)


def showIn3D(segmentationNode, show: bool) -> None:
    if show:
        segmentationNode.CreateClosedSurfaceRepresentation()
    else:
        segmentationNode.RemoveClosedSurfaceRepresentation()
