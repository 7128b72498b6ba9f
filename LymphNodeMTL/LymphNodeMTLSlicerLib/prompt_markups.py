"""The radiologist's record of a node's prompts: markups nodes tied to the node, read back as the
Lib's NodePrompts.

- clicks: one point list per node ("LN <id> clicks"), in the order they were given. A positive
  click is labelled "+" and drawn green, a negative one "-" and red; the point's description says
  "positive" or "negative" (what is read back), and its colour follows its selected state, the
  only colour markups keep per point.
- long axis: one line per node ("LN <id> long axis"), its two ends the RECIST long axis.
A record is tied to its node by two attributes (node id, prompt kind) and a reference to the node's
segmentation, so it stays with a saved scene. A line that drew a new node (one without a seed) says
so in a third attribute: that node's prompts never take a seed from its segment's tags.
"""

import slicer
from LymphNodeMTLLib.core.node_prompts import Click, NodePrompts

from .results_table import TABLE_SEGMENTATION_REFERENCE as SEGMENTATION_REFERENCE  # the table's role too

NODE_ID_ATTRIBUTE = "LymphNodeMTL.NodeId"
PROMPT_ATTRIBUTE = "LymphNodeMTL.Prompt"
DREW_NODE_ATTRIBUTE = "LymphNodeMTL.DrewNode"  # "1" on a line that drew a node without a seed
CLICKS, LINE = "clicks", "line"
POSITIVE, NEGATIVE = "positive", "negative"
_CLASSES = {CLICKS: "vtkMRMLMarkupsFiducialNode", LINE: "vtkMRMLMarkupsLineNode"}
_NAMES = {CLICKS: "LN {} clicks", LINE: "LN {} long axis"}
POSITIVE_COLOR, NEGATIVE_COLOR, LINE_COLOR = (0.1, 0.85, 0.2), (0.95, 0.15, 0.15), (1.0, 0.85, 0.1)


def promptNode(segmentationNode, nodeId: str, kind: str):
    """The node's record of one kind (CLICKS or LINE), or None."""
    if segmentationNode is None:
        return None
    for node in slicer.util.getNodesByClass(_CLASSES[kind]):
        if (node.GetAttribute(NODE_ID_ATTRIBUTE) == nodeId and node.GetAttribute(PROMPT_ATTRIBUTE) == kind
                and node.GetNodeReferenceID(SEGMENTATION_REFERENCE) == segmentationNode.GetID()):
            return node
    return None


def promptNodes(segmentationNode, nodeId: str) -> list:
    return [node for kind in _CLASSES if (node := promptNode(segmentationNode, nodeId, kind)) is not None]


def newPromptNode(kind: str, name: str = "", ends=None):
    """A markups node for prompts of `kind`, drawn in the prompt colours (a line from `ends`, when
    given); not tied to a node yet."""
    node = slicer.mrmlScene.AddNewNodeByClass(_CLASSES[kind], slicer.mrmlScene.GenerateUniqueName(
        name or _NAMES[kind].format("new")))
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if kind == CLICKS:
        display.SetSelectedColor(*POSITIVE_COLOR)  # positive clicks are the selected points
        display.SetColor(*NEGATIVE_COLOR)
        display.SetPointLabelsVisibility(True)
        node.SetControlPointLabelFormat("")  # "+" or "-" once signed
    else:
        display.SetSelectedColor(*LINE_COLOR)
    if ends is not None:
        setLine(node, ends)
    return node


def tie(markupsNode, segmentationNode, nodeId: str, kind: str, drewNode: bool = False) -> None:
    """Make `markupsNode` the node's record of `kind`."""
    markupsNode.SetAttribute(NODE_ID_ATTRIBUTE, nodeId)
    markupsNode.SetAttribute(PROMPT_ATTRIBUTE, kind)
    if drewNode:
        markupsNode.SetAttribute(DREW_NODE_ATTRIBUTE, "1")
    markupsNode.SetNodeReferenceID(SEGMENTATION_REFERENCE, segmentationNode.GetID())
    if kind == LINE:
        markupsNode.SetLocked(True)  # as the mask followed it; a new line replaces it
    name = _NAMES[kind].format(nodeId)
    if markupsNode.GetName() != name:
        markupsNode.SetName(slicer.mrmlScene.GenerateUniqueName(name))


def clickList(segmentationNode, nodeId: str):
    """The node's click list, made (empty) when it has none."""
    node = promptNode(segmentationNode, nodeId, CLICKS)
    if node is None:
        node = newPromptNode(CLICKS, _NAMES[CLICKS].format(nodeId))  # named as tie() names it
        tie(node, segmentationNode, nodeId, CLICKS)
    return node


def markClick(clicks, index: int, positive: bool) -> str:
    """Give point `index` its sign (label, description, colour) and lock it where it was placed (a
    moved click would be another prompt than the one the mask followed); its control point id."""
    clicks.SetNthControlPointLabel(index, "+" if positive else "-")
    clicks.SetNthControlPointDescription(index, POSITIVE if positive else NEGATIVE)
    clicks.SetNthControlPointSelected(index, bool(positive))
    clicks.SetNthControlPointLocked(index, True)
    return clicks.GetNthControlPointID(index)


def addClick(clicks, ras, positive: bool) -> str:
    """A click at `ras` (world) at the end of the list; its control point id."""
    index = clicks.AddControlPointWorld(*[float(v) for v in ras])
    return markClick(clicks, index, positive)


def removePoint(markupsNode, pointId: str) -> None:
    index = markupsNode.GetControlPointIndexByID(pointId) if pointId else -1
    if index >= 0:
        markupsNode.RemoveNthControlPoint(index)


def clicksOf(clicks) -> tuple:
    """The placed clicks in order (points without a sign, still being placed, are left out)."""
    if clicks is None:
        return ()
    found = []
    for index in range(clicks.GetNumberOfControlPoints()):
        sign = clicks.GetNthControlPointDescription(index)
        if clicks.GetNthControlPointPositionStatus(index) != clicks.PositionDefined or sign not in (
                POSITIVE, NEGATIVE):
            continue
        found.append(Click(_worldPosition(clicks, index), sign == POSITIVE))
    return tuple(found)


def unsignedPoint(clicks) -> int:
    """The index of the last placed point that has no sign yet (one just placed), or -1."""
    for index in reversed(range(clicks.GetNumberOfControlPoints())):
        if (clicks.GetNthControlPointPositionStatus(index) == clicks.PositionDefined
                and clicks.GetNthControlPointDescription(index) not in (POSITIVE, NEGATIVE)):
            return index
    return -1


def lineOf(lineNode):
    """The line's two ends (world RAS), or None until both are placed."""
    if lineNode is None or lineNode.GetNumberOfDefinedControlPoints() < 2:
        return None
    return _worldPosition(lineNode, 0), _worldPosition(lineNode, 1)


def setLine(lineNode, ends) -> None:
    lineNode.SetLineStartPositionWorld(list(ends[0]))
    lineNode.SetLineEndPositionWorld(list(ends[1]))


def drewNode(segmentationNode, nodeId: str) -> bool:
    """Whether the node was drawn by its line (it has no seed of its own)."""
    line = promptNode(segmentationNode, nodeId, LINE)
    return line is not None and line.GetAttribute(DREW_NODE_ATTRIBUTE) == "1"


def nodePrompts(segmentationNode, nodeId: str, seed, line=None) -> NodePrompts:
    """The node's prompts as its record holds them: `seed` (its segment's, or None), its line (or
    `line`, one just drawn) and its clicks in order."""
    if line is None:
        line = lineOf(promptNode(segmentationNode, nodeId, LINE))
    clicks = clicksOf(promptNode(segmentationNode, nodeId, CLICKS))
    return NodePrompts(nodeId, None if seed is None else tuple(float(v) for v in seed), line, None, clicks)


def startPlacing(markupsNode, persistent: bool) -> None:
    """Put the slice views in place mode for `markupsNode` (each click adds one of its points)."""
    logic = slicer.modules.markups.logic()
    logic.SetActiveList(markupsNode)
    logic.StartPlaceMode(persistent)


def stopPlacing() -> None:
    interaction = slicer.mrmlScene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    if interaction is not None:
        interaction.SwitchToViewTransformMode()


def _worldPosition(markupsNode, index: int):
    ras = [0.0, 0.0, 0.0]
    markupsNode.GetNthControlPointPositionWorld(index, ras)
    return tuple(float(v) for v in ras)
