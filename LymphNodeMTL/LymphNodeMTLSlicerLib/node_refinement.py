"""A node refined prompt by prompt: what one refinement will do (planned on the main thread before
the server is asked), the segment as it was before (to undo it), and each node's undo stack.

A refinement sends the node's whole prompt list in order, as its markups record holds it
(prompt_markups.py): the server gives the same mask for the same prompts. Before the reply replaces
the node's mask, tags and table row, a snapshot keeps them as they were (mask, name, colour, every
tag, the row); Undo writes the snapshot back and takes the refinement's prompt away again (its
point, or the line as it was), so repeated Undo walks back to the mask the node had before its first
prompt, and past a line that drew a new node, to no node at all. A segment edited by hand is never
replaced without a yes: the plan, and Undo, say when one is needed.
"""

from dataclasses import dataclass, field

import slicer
from LymphNodeMTLLib.core.case import Case
from LymphNodeMTLLib.core.errors import InputError
from LymphNodeMTLLib.core.mask_checksum import mask_bounds, mask_checksum
from LymphNodeMTLLib.core.node_prompts import NodePrompts

from . import node_segments, output_nodes, prompt_markups, results_table

NEW_NODE_PREFIX = "L"  # ids of nodes a line drew: L1, L2... (seed labels are numbers)


class ConfirmationNeeded(InputError):
    """The node's segment was edited by hand: replacing it needs an explicit yes."""


@dataclass(eq=False)
class SegmentSnapshot:
    """A node's segment and table row as they were; `segmentId` None: the node had no segment."""

    segmentId: object
    startKji: tuple = (0, 0, 0)
    mask: object = None  # bounding-box crop of the mask
    metadata: object = None  # a vtkSegment holding the name, colour and every tag
    row: object = None  # the table row (results_table.tableRows), None: none
    checksum: str = ""  # of the mask: tells whether the segment changed since

    @classmethod
    def take(cls, segmentationNode, segmentId, volumeNode, tableNode, nodeId) -> "SegmentSnapshot":
        if segmentId is None:
            return cls(None)
        mask = node_segments.segmentMask(segmentationNode, segmentId, volumeNode)
        start, stop = mask_bounds(mask)
        metadata = slicer.vtkSegment()
        metadata.DeepCopyMetadata(segmentationNode.GetSegmentation().GetSegment(segmentId))
        return cls(segmentId, start, mask[tuple(slice(a, b) for a, b in zip(start, stop))].copy(), metadata,
                   results_table.tableRows(tableNode).get(nodeId), mask_checksum(mask))

    def isCurrent(self, segmentationNode, volumeNode) -> bool:
        """Whether the segment is still as it was (or, for none, still absent)."""
        segmentation = segmentationNode.GetSegmentation() if segmentationNode is not None else None
        if self.segmentId is None:
            return True
        if segmentation is None or segmentation.GetSegment(self.segmentId) is None:
            return False
        return node_segments.segmentChecksum(segmentationNode, self.segmentId, volumeNode) == self.checksum

    def restore(self, segmentationNode, volumeNode, tableNode, nodeId, labels) -> None:
        """Write the mask, name, colour, tags and row back; for none, remove the node's segment."""
        segmentation = segmentationNode.GetSegmentation()
        if self.segmentId is None:
            segmentId = node_segments.lymphNodeSegments(segmentationNode).get(nodeId)
            if segmentId is not None:
                segmentation.RemoveSegment(segmentId)
        else:
            node_segments.writeMask(segmentationNode, volumeNode, self.segmentId, self.startKji, self.mask)
            segmentation.GetSegment(self.segmentId).DeepCopyMetadata(self.metadata)
        if tableNode is not None and tableNode.GetScene() is not None:
            results_table.replaceRows(tableNode, segmentationNode, {nodeId: self.row}, labels)


@dataclass(eq=False)
class PromptChange:
    """What a refinement adds to the node's record: a click (its point in the click list) or a line
    (drawn on its own line node, then moved into the node's line when the node had one)."""

    kind: str
    markupsNode: object  # the click list, or the line just drawn
    pointId: str = ""
    recordLine: object = None  # the node's line before this change, if it had one
    previousEnds: object = None  # ... and its ends then
    newList: bool = False  # the click list was made for this click

    def discard(self) -> None:
        """The refinement was not applied: take the prompt away again (and a click list made for it)."""
        if self.kind == prompt_markups.CLICKS:
            prompt_markups.removePoint(self.markupsNode, self.pointId)
            if self.newList and not self.markupsNode.GetNumberOfControlPoints():
                slicer.mrmlScene.RemoveNode(self.markupsNode)
        elif self.markupsNode.GetScene() is not None:
            slicer.mrmlScene.RemoveNode(self.markupsNode)

    def commit(self, segmentationNode, nodeId, drewNode: bool) -> None:
        """The refinement was applied: a drawn line becomes (or moves) the node's line."""
        if self.kind != prompt_markups.LINE:
            return
        if self.recordLine is not None:
            prompt_markups.setLine(self.recordLine, prompt_markups.lineOf(self.markupsNode))
            slicer.mrmlScene.RemoveNode(self.markupsNode)
        else:
            prompt_markups.tie(self.markupsNode, segmentationNode, nodeId, prompt_markups.LINE, drewNode)

    def undo(self, segmentationNode, nodeId) -> None:
        """After the refinement was applied: the record as it was before it."""
        if self.kind == prompt_markups.CLICKS:
            prompt_markups.removePoint(self.markupsNode, self.pointId)
        elif self.recordLine is not None:
            prompt_markups.setLine(self.recordLine, self.previousEnds)
        else:
            line = prompt_markups.promptNode(segmentationNode, nodeId, prompt_markups.LINE)
            if line is not None:
                slicer.mrmlScene.RemoveNode(line)


@dataclass(eq=False)
class RefinementPlan:
    """One refinement: the node's prompts to send, the segment before, the prompt it adds."""

    volumeNode: object
    segmentationNode: object  # None: no segmentation yet (a line draws the first node)
    tableNode: object
    case: Case
    prompts: NodePrompts
    snapshot: SegmentSnapshot
    change: PromptChange
    confirmation: str = ""  # not empty: the segment was edited by hand; the question to ask

    @property
    def nodeId(self) -> str:
        return self.prompts.node_id

    @property
    def drawsNode(self) -> bool:
        return self.snapshot.segmentId is None


@dataclass(eq=False)
class RefinementStep:
    """One applied refinement, as Undo needs it."""

    plan: RefinementPlan
    segmentationNode: object
    tableNode: object
    result: object  # the NodeResult written

    @property
    def checksum(self) -> str:
        """Of the mask the refinement wrote."""
        return mask_checksum(self.result.mask, self.result.bbox_start_kji)


@dataclass(eq=False)
class UndoPlan:
    step: RefinementStep
    confirmation: str = ""


@dataclass
class RefinementHistory:
    """Each node's applied refinements, the last one on top (segmentation node id, node id)."""

    steps: dict = field(default_factory=dict)

    def push(self, step: RefinementStep) -> None:
        self.steps.setdefault((step.segmentationNode.GetID(), step.plan.nodeId), []).append(step)

    def last(self, segmentationNode, nodeId):
        stack = self.steps.get((segmentationNode.GetID(), nodeId)) if segmentationNode is not None else None
        return stack[-1] if stack else None

    def pop(self, step: RefinementStep) -> None:
        self.steps[(step.segmentationNode.GetID(), step.plan.nodeId)].remove(step)

    def count(self, segmentationNode, nodeId) -> int:
        return len(self.steps.get((segmentationNode.GetID(), nodeId), ())) if segmentationNode is not None else 0

    def clear(self) -> None:
        self.steps.clear()


def clickChange(clicks, index: int, positive: bool) -> PromptChange:
    """A click placed at point `index` of the node's click list, signed."""
    return PromptChange(prompt_markups.CLICKS, clicks, prompt_markups.markClick(clicks, index, positive))


def newClick(segmentationNode, nodeId: str, ras, positive: bool) -> PromptChange:
    """A click at `ras` (world) added to the node's click list (made when it has none)."""
    newList = prompt_markups.promptNode(segmentationNode, nodeId, prompt_markups.CLICKS) is None
    clicks = prompt_markups.clickList(segmentationNode, nodeId)
    index = clicks.AddControlPointWorld(*[float(v) for v in ras])
    change = clickChange(clicks, index, positive)
    change.newList = newList
    return change


def lineChange(segmentationNode, nodeId, drawnLine) -> PromptChange:
    """A line drawn on `drawnLine` for the node `nodeId` (None: a new node)."""
    record = prompt_markups.promptNode(segmentationNode, nodeId, prompt_markups.LINE) if nodeId else None
    if prompt_markups.lineOf(drawnLine) is None:
        slicer.mrmlScene.RemoveNode(drawnLine)
        raise InputError("the long axis needs both ends; draw it from one edge of the node to the other")
    return PromptChange(prompt_markups.LINE, drawnLine, recordLine=record,
                        previousEnds=prompt_markups.lineOf(record))


def newNodeId(segmentationNode) -> str:
    taken = set(node_segments.lymphNodeSegments(segmentationNode)) if segmentationNode is not None else set()
    number = 1
    while f"{NEW_NODE_PREFIX}{number}" in taken:
        number += 1
    return f"{NEW_NODE_PREFIX}{number}"


def planRefinement(volumeNode, segmentationNode, tableNode, caseOf, nodeId, change: PromptChange) -> RefinementPlan:
    """The node's prompts with `change` (all of them, in order), checked against the CT (the Case
    `caseOf()` reads), and the segment as it is now; on a refusal the change is taken away again."""
    try:
        case = caseOf()
        segments = node_segments.lymphNodeSegments(segmentationNode) if segmentationNode is not None else {}
        segmentId = segments.get(nodeId) if nodeId else None
        if nodeId and segmentId is None:
            raise InputError(f"node {nodeId} has no segment; pick a node from the results table")
        nodeId = nodeId or newNodeId(segmentationNode)
        if tableNode is None and segmentationNode is not None:
            tableNode = output_nodes.linkedTable(segmentationNode)
        seed = None
        if segmentId is not None and not prompt_markups.drewNode(segmentationNode, nodeId):
            seed = node_segments.tagsOf(segmentationNode.GetSegmentation().GetSegment(segmentId)).seed_ras
        line = prompt_markups.lineOf(change.markupsNode) if change.kind == prompt_markups.LINE else None
        prompts = prompt_markups.nodePrompts(segmentationNode, nodeId, seed, line)
        prompts.validate(case.geometry)
        snapshot = SegmentSnapshot.take(segmentationNode, segmentId, volumeNode, tableNode, nodeId)
    except Exception:
        change.discard()
        raise
    plan = RefinementPlan(volumeNode, segmentationNode, tableNode, case, prompts, snapshot, change)
    if segmentId is not None and node_segments.isSegmentEdited(segmentationNode, segmentId, volumeNode):
        plan.confirmation = (f"The segment of node {nodeId} was edited by hand. Replace your edit with the "
                             "refined mask? (Undo brings your edit back.)")
    return plan


def planUndo(history: RefinementHistory, segmentationNode, nodeId, volumeNode=None) -> UndoPlan:
    """The node's last refinement to undo, and whether the segment was edited by hand since."""
    step = history.last(segmentationNode, nodeId)
    if step is None:
        raise InputError(f"node {nodeId} has no refinement to undo")
    volumeNode = volumeNode or step.plan.volumeNode
    segmentId = node_segments.lymphNodeSegments(segmentationNode).get(nodeId)
    if segmentId is None or volumeNode.GetScene() is None:
        history.pop(step)
        raise InputError(f"node {nodeId} or its CT was removed from the scene: nothing to undo")
    undo = UndoPlan(step)
    if node_segments.segmentChecksum(segmentationNode, segmentId, volumeNode) != step.checksum:
        undo.confirmation = (f"The segment of node {nodeId} was edited by hand (or segmented again) since its "
                             "last refinement. Undo the refinement anyway (that change is lost)?")
    return undo


def undo(history: RefinementHistory, plan: UndoPlan, labels, replaceEdited: bool = False) -> str:
    """Write the segment and row back as they were before the step, take its prompt away; returns
    the status line."""
    step = plan.step
    nodeId = step.plan.nodeId
    if plan.confirmation and not replaceEdited:
        raise ConfirmationNeeded(f"the segment of node {nodeId} changed since its last refinement: nothing was "
                                 "undone; confirm to undo it anyway")
    step.plan.snapshot.restore(step.segmentationNode, step.plan.volumeNode, step.tableNode, nodeId, labels)
    step.plan.change.undo(step.segmentationNode, nodeId)
    if step.plan.drawsNode:
        for node in prompt_markups.promptNodes(step.segmentationNode, nodeId):
            slicer.mrmlScene.RemoveNode(node)
    history.pop(step)
    left = history.count(step.segmentationNode, nodeId)
    if step.plan.drawsNode:
        return f"Undone: node {nodeId}, drawn by its line, removed."
    return f"Undone: node {nodeId} back to its mask before that prompt ({left} refinement(s) left to undo)."


def checkUnchanged(plan: RefinementPlan) -> None:
    """Before the reply replaces anything: the segment is still as it was when the prompt came."""
    if not plan.snapshot.isCurrent(plan.segmentationNode, plan.volumeNode):
        raise InputError(f"node {plan.nodeId} changed while it was being refined; nothing was replaced, "
                         "place the prompt again")
    if plan.change.markupsNode.GetScene() is None or (
            plan.change.recordLine is not None and plan.change.recordLine.GetScene() is None):
        raise InputError(f"the prompt of node {plan.nodeId} was removed while it was being refined")
    if plan.change.kind == prompt_markups.CLICKS and plan.change.markupsNode.GetControlPointIndexByID(
            plan.change.pointId) < 0:
        raise InputError(f"the click on node {plan.nodeId} was removed while it was being refined")


def requireConfirmation(plan: RefinementPlan, replaceEdited: bool) -> None:
    """Refuse, taking the prompt away, a refinement that would replace a hand edit unasked."""
    if plan.confirmation and not replaceEdited:
        plan.change.discard()
        raise ConfirmationNeeded(f"the segment of node {plan.nodeId} was edited by hand: nothing was replaced; "
                                 "confirm to replace the edit")
