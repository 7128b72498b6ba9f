"""The module panel's Follow-up section, wired to the Logic: the baseline CT, its results (a
segmentation of an earlier Apply) and the follow-up CT; Apply runs the follow_up job, Re-measure
the classify job on the follow-up segments corrected since; a click on a row shows the node in both
CTs and points the Refine section at the carried node (its clicks then refine it in the follow-up
CT); the suggested response is stated as a suggestion.

Qt wiring only, like the module's Widget (which owns it): the jobs run on the widget's job timer,
one at a time, as Apply's do.
"""

import slicer
from slicer.i18n import tr as _

from . import follow_up_nodes, follow_up_table, output_nodes


class FollowUpControls:
    def __init__(self, ui, logic, parameters, prepareServer, startJob, refine=None):
        """ui: the panel's widgets; parameters() -> the module's parameter node (model folder, device);
        prepareServer() -> False when no job can start; startJob(job, showResult, text): the
        widget's job runner; refine: the Refine section (RefineControls)."""
        self.ui, self.logic, self.refine = ui, logic, refine
        self._parameters, self._prepareServer, self._startJob = parameters, prepareServer, startJob
        self._running = False
        ui.followUpTableSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._showTable)
        for selector in (ui.followUpBaselineVolumeSelector, ui.followUpBaselineSegmentationSelector,
                         ui.followUpVolumeSelector):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", lambda node: self.updateButtons(self._running))
        ui.followUpApplyButton.connect("clicked(bool)", lambda: self.apply())
        ui.followUpRemeasureButton.connect("clicked(bool)", lambda: self.remeasure())
        ui.followUpTableView.connect("clicked(QModelIndex)", self.onRowClicked)
        self.updateButtons(False)

    def updateButtons(self, running: bool) -> None:
        ui, self._running = self.ui, running
        inputs = (ui.followUpBaselineVolumeSelector.currentNode(), ui.followUpBaselineSegmentationSelector.currentNode(),
                  ui.followUpVolumeSelector.currentNode())
        ui.followUpApplyButton.enabled = all(inputs) and not running
        ui.followUpRemeasureButton.enabled = ui.followUpTableSelector.currentNode() is not None and not running

    def apply(self) -> None:
        p = self._parameters()
        if p is None or not self._prepareServer():
            return
        ui = self.ui
        with slicer.util.tryWithErrorDisplay(_("Cannot start the follow-up."), waitCursor=True):
            job = self.logic.followUp(ui.followUpBaselineVolumeSelector.currentNode(),
                                      ui.followUpBaselineSegmentationSelector.currentNode(),
                                      ui.followUpVolumeSelector.currentNode(), ui.followUpTableSelector.currentNode(),
                                      p.modelFolder or None, p.device, waitForCompletion=False)
            self._startJob(job, self._showResult, _("Carrying the baseline nodes into the follow-up CT..."))

    def remeasure(self) -> None:
        p = self._parameters()
        if p is None or not self._prepareServer():
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot start the re-measure."), waitCursor=True):
            job = self.logic.remeasureFollowUp(self.ui.followUpTableSelector.currentNode(), p.modelFolder or None,
                                               p.device, waitForCompletion=False)
            self._startJob(job, self._showResult, _("Re-measuring the corrected follow-up nodes..."))

    def _showResult(self, summary) -> str:
        self.ui.followUpTableSelector.setCurrentNode(summary.tableNode)
        self._showTable(summary.tableNode)
        slicer.util.setSliceViewerLayers(background=self.ui.followUpVolumeSelector.currentNode() or None)
        return summary.message()

    def _showTable(self, tableNode) -> None:
        self.ui.followUpTableView.setMRMLTableNode(tableNode)
        self.ui.followUpResponseLabel.text = follow_up_table.responseLine(follow_up_table.response(tableNode))
        self.updateButtons(self._running)

    def onRowClicked(self, index) -> None:
        nodeId = index.sibling(index.row(), 0).data()  # the id column: robust to sorting
        tableNode = self.ui.followUpTableSelector.currentNode()
        if not nodeId or tableNode is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot show the node."), waitCursor=True):
            shown = follow_up_nodes.showRow(tableNode, str(nodeId))
            views = {follow_up_nodes.FOLLOW_UP_VIEW: _("follow-up CT"), follow_up_nodes.BASELINE_VIEW: _("baseline CT")}
            parts = [_("{view} view: {ct}").format(view=view, ct=views[view]) for view in shown]
            if self.refine is not None and self._refineOnFollowUp(tableNode, str(nodeId)):
                parts.append(_("Refine works on it in the follow-up CT"))
            self.ui.statusLabel.text = _("Node {id}: ").format(id=nodeId) + "; ".join(parts)

    def _refineOnFollowUp(self, tableNode, nodeId: str) -> bool:
        """The module's CT and segmentation become the follow-up ones, so that the Refine section's
        clicks refine the carried node (Re-measure then takes the refined mask)."""
        p = self._parameters()
        if p is None:
            return False
        nodes = follow_up_table.references(tableNode)
        p.inputVolume, p.outputSegmentation = nodes["followUpVolume"], nodes["followUpSegmentation"]
        p.outputTable = output_nodes.linkedTable(nodes["followUpSegmentation"])  # None: a refinement makes one
        self.refine.follow(nodeId)
        return True
