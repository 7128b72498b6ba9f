"""The module panel's Refine section, wired to the Logic: the node being refined (it follows the
results table's clicked row and the Segment Editor's selected segment), positive and negative
point placement and the long-axis line in the slice views, Undo, their keyboard shortcuts, and the
question asked before a segment edited by hand is replaced.

Qt wiring only, like the module's Widget (which owns it): each placed prompt goes to the Logic,
which plans the refinement; the server job it starts runs on the widget's job timer, as Apply's
does. One job runs at a time: a prompt placed meanwhile is taken away again with one line.
"""

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.util import VTKObservationMixin

from . import node_navigation, node_refinement, prompt_markups

# (key, what it does): the keys of nnInteractive's Slicer module where they mean the same thing.
SHORTCUTS = (
    ("O", "placePoint"),  # a point of the current sign (positive until toggled)
    ("T", "toggleSign"),  # positive <-> negative, also while placing
    ("L", "placeLine"),  # the long axis: reshapes the node, or draws a new one
    ("E", "newNode"),  # no node selected: the next long axis draws a new node
    ("Ctrl+Z", "undo"),  # the node's last prompt
)


class RefineControls(VTKObservationMixin):
    def __init__(self, ui, logic, parameters, prepareServer, startJob, busy):
        """ui: the panel's widgets; parameters() -> the module's parameter node; prepareServer() ->
        False when no job can start; startJob(job, showResult, text): the widget's job runner;
        busy() -> whether a job is running."""
        VTKObservationMixin.__init__(self)
        self.ui, self.logic = ui, logic
        self._parameters, self._prepareServer, self._startJob, self._busy = parameters, prepareServer, startJob, busy
        self.nodeId = None  # the node being refined; None: a long axis draws a new node
        self.positive = True
        self._placing = None  # the markups node receiving points in the slice views
        self._editorSelection = None  # the last Segment Editor selection followed
        ui.positivePointButton.connect("clicked(bool)", lambda on: self._pointButton(True, on))
        ui.negativePointButton.connect("clicked(bool)", lambda on: self._pointButton(False, on))
        ui.longAxisButton.connect("clicked(bool)", lambda on: self.placeLine() if on else self.stopPlacing())
        ui.newNodeButton.connect("clicked(bool)", lambda: self.newNode())
        ui.undoButton.connect("clicked(bool)", lambda: self.undo())
        self._shortcuts = []
        for key, action in SHORTCUTS:
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.setEnabled(False)  # only while the module is shown
            shortcut.connect("activated()", getattr(self, action))
            self._shortcuts.append(shortcut)
        self.follow(None)

    # --- the node being refined --------------------------------------------------------------------
    def follow(self, nodeId) -> None:
        """Refine `nodeId` from now on (None: the next long axis draws a new node)."""
        if nodeId != self.nodeId:
            self.stopPlacing()
        self.nodeId = nodeId or None
        self.ui.refineNodeLabel.text = (_("Node {id}").format(id=self.nodeId) if self.nodeId
                                        else _("None: a long axis draws a new node"))
        self._updateButtons()

    def newNode(self) -> None:
        self.follow(None)

    def setActive(self, active: bool) -> None:
        """The module shown (shortcuts on, the Segment Editor's selection followed) or left."""
        for shortcut in self._shortcuts:
            shortcut.setEnabled(active)
        for editorNode in slicer.util.getNodesByClass("vtkMRMLSegmentEditorNode"):
            self.removeObserver(editorNode, vtk.vtkCommand.ModifiedEvent, self._onEditorModified)
            if active:
                self.addObserver(editorNode, vtk.vtkCommand.ModifiedEvent, self._onEditorModified)
        if active:
            self._onEditorModified()
        else:
            self.stopPlacing()

    def _onEditorModified(self, caller=None, event=None) -> None:
        segmentation = self._segmentation()
        selected = node_navigation.selectedNodeId(segmentation) if segmentation is not None else None
        if selected and selected != self._editorSelection:
            self.follow(selected)
        self._editorSelection = selected

    def sceneClosing(self) -> None:
        self.stopPlacing()
        self.logic.refinements.clear()
        self.follow(None)

    def cleanup(self) -> None:
        self.stopPlacing()
        self.removeObservers()
        for shortcut in self._shortcuts:
            shortcut.setParent(None)
        self._shortcuts = []

    # --- placing prompts in the slice views ------------------------------------------------------
    def _pointButton(self, positive: bool, on: bool) -> None:
        if on:
            self.placePoint(positive)
        else:
            self.stopPlacing()

    def placePoint(self, positive=None) -> None:
        """Place clicks on the node, one per click in a slice view, until stopped (Esc)."""
        self.positive = self.positive if positive is None else positive
        p = self._parameters()
        if not self.nodeId or p is None or p.outputSegmentation is None:
            self.stopPlacing()
            self._say(_("Pick a node first: click its row in the results table or select its segment."))
            return
        self._place(prompt_markups.clickList(p.outputSegmentation, self.nodeId), persistent=True)

    def toggleSign(self) -> None:
        self.positive = not self.positive
        self._updateButtons()

    def placeLine(self) -> None:
        """Draw the long axis (two clicks): it reshapes the node, or draws a new one."""
        self._place(prompt_markups.newPromptNode(prompt_markups.LINE), persistent=False)

    def _place(self, markupsNode, persistent: bool) -> None:
        self.stopPlacing()
        self._placing = markupsNode
        self.addObserver(markupsNode, markupsNode.PointPositionDefinedEvent, self._onPointDefined)
        interaction = slicer.mrmlScene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        prompt_markups.startPlacing(markupsNode, persistent)
        self.addObserver(interaction, interaction.InteractionModeChangedEvent, self._onInteractionMode)
        self._updateButtons()

    def stopPlacing(self, keep: bool = False) -> None:
        """Leave place mode; a line left half drawn is removed unless `keep`."""
        placing, self._placing = self._placing, None
        interaction = slicer.mrmlScene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        if interaction is not None:
            self.removeObserver(interaction, interaction.InteractionModeChangedEvent, self._onInteractionMode)
        if placing is not None:
            self.removeObserver(placing, placing.PointPositionDefinedEvent, self._onPointDefined)
            prompt_markups.stopPlacing()
            untied = placing.IsA("vtkMRMLMarkupsLineNode") and not placing.GetAttribute(prompt_markups.PROMPT_ATTRIBUTE)
            if untied and not keep and placing.GetScene() is not None:
                slicer.mrmlScene.RemoveNode(placing)
        self._updateButtons()

    def _onInteractionMode(self, caller, event) -> None:
        if caller.GetCurrentInteractionMode() == caller.Place:
            return
        placing = self._placing  # Esc or a right click; or Slicer ending place mode on a finished line
        if placing is not None and placing.IsA("vtkMRMLMarkupsLineNode") and prompt_markups.lineOf(placing):
            self._placed(placing)
        else:
            self.stopPlacing()

    def _onPointDefined(self, caller, event) -> None:
        if caller.IsA("vtkMRMLMarkupsLineNode") and caller.GetNumberOfDefinedControlPoints() < 2:
            return
        self._placed(caller)

    def _placed(self, markupsNode) -> None:
        if markupsNode.IsA("vtkMRMLMarkupsLineNode"):
            self.stopPlacing(keep=True)
        # out of the view's event handling before a dialog may open
        qt.QTimer.singleShot(0, lambda: self._prompted(markupsNode))

    def _prompted(self, markupsNode) -> None:
        """A prompt was placed: ask the Logic for its refinement, and start it."""
        p = self._parameters()
        line = markupsNode.IsA("vtkMRMLMarkupsLineNode")
        index = -1 if line else prompt_markups.unsignedPoint(markupsNode)
        if p is None or markupsNode.GetScene() is None or (not line and index < 0):
            return
        if self._busy() or not self._prepareServer():
            if line:
                slicer.mrmlScene.RemoveNode(markupsNode)
            else:
                prompt_markups.removePoint(markupsNode, markupsNode.GetNthControlPointID(index))
            if self._busy():
                self._say(_("A job is running: place the prompt again when it has finished."))
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot refine the node."), waitCursor=True):
            change = (node_refinement.lineChange(p.outputSegmentation, self.nodeId, markupsNode) if line
                      else node_refinement.clickChange(markupsNode, index, self.positive))
            plan = self.logic.planPrompt(p.inputVolume, p.outputSegmentation, p.outputTable, self.nodeId, change)
            if plan.confirmation and not slicer.util.confirmYesNoDisplay(plan.confirmation):
                plan.change.discard()
                self._say(_("Your edit is kept: nothing was changed."))
                return
            job = self.logic.startRefinement(plan, p.modelFolder or None, p.device, replaceEdited=True)
            self._startJob(job, lambda summary: self._showRefinement(plan, summary),
                           _("Refining node {id}...").format(id=plan.nodeId))

    def _showRefinement(self, plan, summary) -> str:
        p = self._parameters()
        p.outputSegmentation, p.outputTable = summary.segmentationNode, summary.tableNode
        self.ui.resultsTableView.setMRMLTableNode(summary.tableNode)
        self.follow(plan.nodeId)
        clicks = len(plan.prompts.clicks)
        return _("Node {id} refined: {what}; Undo (Ctrl+Z) goes back one prompt.").format(
            id=plan.nodeId, what=", ".join(filter(None, (
                _("seed") if plan.prompts.seed is not None else "",
                _("long axis") if plan.prompts.line is not None else "",
                _("{n} click(s)").format(n=clicks) if clicks else ""))))

    # --- Undo ----------------------------------------------------------------------------------------
    def undo(self) -> None:
        p = self._parameters()
        if self._busy() or not self.nodeId or p is None:
            self._say(_("Nothing to undo: pick a refined node (and wait for a running job)."))
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot undo."), waitCursor=True):
            plan = self.logic.planUndo(p.outputSegmentation, self.nodeId)
            if plan.confirmation and not slicer.util.confirmYesNoDisplay(plan.confirmation):
                return
            self._say(self.logic.undo(p.outputSegmentation, self.nodeId, replaceEdited=True, plan=plan))
            if plan.step.plan.drawsNode:
                self.follow(None)
            self._updateButtons()

    # --- state ---------------------------------------------------------------------------------------
    def _segmentation(self):
        p = self._parameters()
        return p.outputSegmentation if p is not None else None

    def _say(self, text: str) -> None:
        self.ui.statusLabel.text = text

    def _updateButtons(self) -> None:
        placingPoints = self._placing is not None and not self._placing.IsA("vtkMRMLMarkupsLineNode")
        for button, checked in ((self.ui.positivePointButton, placingPoints and self.positive),
                                (self.ui.negativePointButton, placingPoints and not self.positive),
                                (self.ui.longAxisButton, self._placing is not None and not placingPoints)):
            button.checked = checked
        self.ui.positivePointButton.enabled = self.ui.negativePointButton.enabled = bool(self.nodeId)
        self.ui.undoButton.enabled = bool(self.nodeId) and self.logic.refinements.count(
            self._segmentation(), self.nodeId) > 0
        self.ui.longAxisButton.text = _("Long axis (reshape)") if self.nodeId else _("Long axis (new node)")
