"""LymphNodeMTL: lymph-node masks and metastasis probabilities from seeds, inside 3D Slicer.

Module (description), Widget (Qt wiring only), Logic (MRML <-> the engine's types) and Test (the
self-test Slicer's test runner calls). The engine runs in an inference server process, local by
default (started with Slicer's own Python) or a shared GPU server: Slicer's Python never runs
torch, and nothing runs on a Python thread. The Slicer-side helpers (server life cycle and HTTP
client, lymph-node segments and their tags, results table, export, dependency installer) live in
LymphNodeMTLSlicerLib.
"""

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import qt
import slicer
import vtk
from LymphNodeMTLLib.core.case import Case
from LymphNodeMTLLib.core.errors import InputError
from LymphNodeMTLLib.core.geometry import VolumeGeometry
from LymphNodeMTLLib.server.job_steps import classify_job, follow_up_job, predict_job, refine_job
from LymphNodeMTLSlicerLib import (
    dependency_installer,
    follow_up_nodes,
    node_navigation,
    node_refinement,
    node_segments,
    output_nodes,
    prompt_markups,
    result_export,
    results_table,
    seed_markups,
    server_settings,
    volume_cache,
)
from LymphNodeMTLSlicerLib.follow_up_controls import FollowUpControls
from LymphNodeMTLSlicerLib.follow_up_job import FollowUpServerJob
from LymphNodeMTLSlicerLib.module_job import ModuleJob, NothingToDo
from LymphNodeMTLSlicerLib.refine_controls import RefineControls
from LymphNodeMTLSlicerLib.run_plans import PredictionPlan, ReclassificationPlan, RunSummary
from LymphNodeMTLSlicerLib.server_session import LOCAL_SERVER, ServerSession
from LymphNodeMTLSlicerLib.volume_cache import VolumeCache
from slicer import (
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

TERMINOLOGY_FILE = Path(__file__).resolve().parent / "Resources" / "LymphNodeMTL.term.json"
MODULE_TERMINOLOGY = node_segments.terminologyEntry(TERMINOLOGY_FILE)  # segments point to the module's list


#
# LymphNodeMTL
#


class LymphNodeMTL(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Lymph Node MTL")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []  # PyTorch Utils is needed only to install torch
        self.parent.contributors = ["LymphNodeMTL contributors"]
        self.parent.helpText = _("""
Segments lymph nodes from one seed per node and estimates each node's probability of metastasis.
Place seeds (one click per node), choose the CT, press Apply: you get one segment per node
("LN &lt;id&gt;", coloured green to red by probability) and a table of status, probability, mask
agreement (how stable the mask is), short and long axis, volume and mean HU, nodes to review first on
top. Edit a segment and press Re-classify to update its probability from your mask; add seeds and
press Apply again to process only the new nodes. Under Refine, pick a node (row or segment) and add
positive (O) or negative points (T toggles) or a long axis (L; with no node it draws one): segment
and row follow each prompt, and Undo (Ctrl+Z) steps back. Edited segments are never overwritten
unless you ask. Follow-up: baseline CT, its results and a later CT give the nodes there and both time
points per node (a row click shows both CTs; Re-measure takes corrections). The engine runs in an inference server: by default one on this computer (started on
first use, stopped when Slicer quits); Advanced settings take a shared server's address and token.
<p><b>The bundled model was trained on synthetic phantoms only: it is a demonstration, not a
clinical tool, and must not be used for diagnosis.</b> Use your own model folder for real work.</p>
""")
        self.parent.acknowledgementText = _("""
Built on 3D Slicer, MONAI and PyTorch. Method ideas from multi-task lymph-node segmentation and
classification papers (see the extension's README).
""")
        slicer.app.connect("startupCompleted()", loadLymphNodeTerminology)


def loadLymphNodeTerminology():
    """Offer the module's lymph-node terminology (the one its segments point to) in Slicer."""
    terminologies = getattr(slicer.modules, "terminologies", None)
    if terminologies and TERMINOLOGY_FILE.is_file():
        terminologies.logic().LoadTerminologyFromFile(str(TERMINOLOGY_FILE))


#
# Parameter node
#


@parameterNodeWrapper
class LymphNodeMTLParameterNode:
    """The module's inputs and outputs, saved with the scene.

    inputVolume: the CT.  seeds: one control point per node (its label is the node id).
    outputSegmentation / outputTable: created on first Apply when empty.
    modelFolder: a model folder for the local server; empty = the bundled demonstration model.
    device: where the local server runs the network.  overwriteEdited: let Apply replace edits.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    seeds: vtkMRMLMarkupsFiducialNode
    outputSegmentation: vtkMRMLSegmentationNode
    outputTable: vtkMRMLTableNode
    modelFolder: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    overwriteEdited: bool = False


#
# LymphNodeMTLWidget
#


class LymphNodeMTLWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Qt wiring only: parameter node <-> GUI, buttons -> Logic, the running job ticked by a QTimer."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None  # the running ModuleJob
        self._showResult = None  # main-thread callback for its summary
        self._pollTimer = None
        self.refine = None  # the Refine section's wiring (RefineControls)
        self.followUp = None  # the Follow-up section's (FollowUpControls)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LymphNodeMTL.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LymphNodeMTLLogic()

        placeWidget = self.ui.seedsPlaceWidget
        placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        self.ui.exportDirectoryButton.directory = slicer.app.defaultScenePath
        self.ui.progressBar.hide()
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(int(self.logic.server.pollIntervalS * 1000))
        self._pollTimer.connect("timeout()", self._pollJob)

        # This computer's settings, not the scene's; the token stays in memory (this widget lives as
        # long as Slicer) unless "remember" is ticked.
        url, token, remember = server_settings.loadServer(qt.QSettings(), LOCAL_SERVER)
        self.ui.serverUrlLineEdit.text, self.ui.serverTokenLineEdit.text = url, token
        self.ui.rememberTokenCheckBox.checked = remember

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.seedsSelector.connect("currentNodeChanged(vtkMRMLNode*)", placeWidget.setCurrentNode)
        self.ui.seedsSelector.connect("nodeAddedByUser(vtkMRMLNode*)", self.logic.initializeSeedsNode)
        self.ui.outputTableSelector.connect("currentNodeChanged(vtkMRMLNode*)",
                                            self.ui.resultsTableView.setMRMLTableNode)
        self.ui.resultsTableView.connect("clicked(QModelIndex)", self.onResultsTableClicked)
        self.ui.modelFolderBrowseButton.connect("clicked(bool)", self.onBrowseModelFolder)
        self.ui.show3DCheckBox.connect("toggled(bool)", self.onShow3DToggled)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.reclassifyButton.connect("clicked(bool)", self.onReclassifyButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.refine = RefineControls(self.ui, self.logic, lambda: self._parameterNode, self._prepareServer,
                                     self._startJob, lambda: self._job is not None)
        self.followUp = FollowUpControls(self.ui, self.logic, lambda: self._parameterNode, self._prepareServer,
                                         self._startJob, self.refine)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job:
            self._job.cancel()
        if self._pollTimer:
            self._pollTimer.stop()
        self.refine.cleanup()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.refine.setActive(True)

    def exit(self) -> None:
        self.refine.setActive(False)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job:
            self._job.cancel()  # its nodes are about to disappear
        self.refine.sceneClosing()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.inputVolume:
            p.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if not p.seeds:
            p.seeds = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLMarkupsFiducialNode")
        # Machine-level preferences: the last device and model folder used on this computer.
        settings = qt.QSettings()
        if p.device == "auto" and not p.modelFolder:
            p.device = str(settings.value(server_settings.SETTINGS_DEVICE, "auto"))
            p.modelFolder = str(settings.value(server_settings.SETTINGS_MODEL_FOLDER, ""))

    def setParameterNode(self, inputParameterNode: Optional[LymphNodeMTLParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with a "SlicerParameterName" property in the .ui are connected here.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self.ui.seedsPlaceWidget.setCurrentNode(self._parameterNode.seeds)
            self.ui.resultsTableView.setMRMLTableNode(self._parameterNode.outputTable)
        self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        running = self._job is not None
        haveInputs = bool(p and p.inputVolume and p.seeds)
        haveResults = bool(p and p.inputVolume and p.outputSegmentation)
        if running:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the running job; nothing is changed")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.text = _("Apply")
            self.ui.applyButton.toolTip = (_("Segment and classify the seeded nodes that have no segment yet")
                                           if haveInputs else _("Select the CT and the seeds"))
            self.ui.applyButton.enabled = haveInputs
        self.ui.reclassifyButton.enabled = haveResults and not running
        self.ui.exportButton.enabled = haveResults and not running
        self.followUp and self.followUp.updateButtons(running)

    # --- buttons ---------------------------------------------------------------------------------
    def onApplyButton(self) -> None:
        if self._job:
            self._job.cancel()
            self._pollJob()  # shows "cancelled" at once
            return
        if not self._prepareServer():
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Cannot start the segmentation."), waitCursor=True):
            plan = self.logic.planPrediction(p.inputVolume, p.seeds, p.outputSegmentation, p.outputTable,
                                             overwriteEdited=p.overwriteEdited)
            job = self.logic.startPrediction(plan, p.modelFolder or None, p.device)
            self._startJob(job, self._showPrediction,
                           _("Segmenting {count} node(s)...").format(count=len(plan.case.seeds)))

    def _showPrediction(self, summary) -> str:
        p = self._parameterNode
        p.outputSegmentation = summary.segmentationNode
        p.outputTable = summary.tableNode
        self.ui.resultsTableView.setMRMLTableNode(summary.tableNode)
        if self.ui.show3DCheckBox.checked:
            self.logic.setShow3D(summary.segmentationNode, True)
        slicer.util.setSliceViewerLayers(background=p.inputVolume)
        return summary.message()

    def onReclassifyButton(self) -> None:
        if not self._prepareServer():
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Cannot start the re-classification."), waitCursor=True):
            plan = self.logic.planReclassification(p.inputVolume, p.outputSegmentation, p.outputTable)
            job = self.logic.startReclassification(plan, p.modelFolder or None, p.device)
            self._startJob(job, lambda summary: summary.message(),
                           _("Re-classifying {count} edited node(s)...").format(count=len(plan.results)))

    def onExportButton(self) -> None:
        p = self._parameterNode
        folder = self.ui.exportDirectoryButton.directory
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            report = self.logic.exportResults(p.outputSegmentation, p.outputTable, p.inputVolume, folder)
            slicer.util.infoDisplay("\n".join(report["messages"]), windowTitle=_("Lymph Node MTL export"))

    def onResultsTableClicked(self, index) -> None:
        nodeId = index.sibling(index.row(), 0).data()  # the id column: robust to sorting
        if nodeId and self._parameterNode and self._parameterNode.outputSegmentation:
            self.logic.jumpToNodeId(self._parameterNode.outputSegmentation, str(nodeId))
            self.refine.follow(str(nodeId))

    def onBrowseModelFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(self.parent, _("Model folder (with config.json)"),
                                                     self._parameterNode.modelFolder)
        if folder:
            self._parameterNode.modelFolder = folder

    def onShow3DToggled(self, show: bool) -> None:
        if self._parameterNode and self._parameterNode.outputSegmentation:
            self.logic.setShow3D(self._parameterNode.outputSegmentation, show)

    # --- server and job --------------------------------------------------------------------------
    def _prepareServer(self) -> bool:
        """Save the settings, tell the Logic where the server is; for a local server, make sure its
        packages are there (one question listing them)."""
        p = self._parameterNode
        url = self.ui.serverUrlLineEdit.text.strip() or LOCAL_SERVER
        token = self.ui.serverTokenLineEdit.text.strip()
        server_settings.saveServer(qt.QSettings(), url, token, bool(self.ui.rememberTokenCheckBox.checked),
                                   p.device, p.modelFolder)
        self.logic.setServer(url, token)
        if url != LOCAL_SERVER:
            return True  # a remote server brings its own packages
        try:
            return dependency_installer.ensureRequirements()
        except Exception as error:
            slicer.util.errorDisplay(_("Installing Python packages failed: {error}").format(error=error))
            return False

    def _startJob(self, job, showResult, statusText: str) -> None:
        self._job, self._showResult = job, showResult
        self.ui.statusLabel.text = statusText
        self.ui.progressBar.setRange(0, 0)  # busy until the first progress report
        self.ui.progressBar.show()
        self._updateButtons()
        self._pollTimer.start()

    def _pollJob(self) -> None:
        """Timer tick: advance the job; when it ended, say how, and show its results."""
        job = self._job
        if job is None:
            self._pollTimer.stop()
            return
        job.tick()
        _stage, done, total = job.progress
        if total:
            self.ui.progressBar.setRange(0, total)
            self.ui.progressBar.value = done
        if not job.finished:
            return
        self._pollTimer.stop()
        self._job, showResult, self._showResult = None, self._showResult, None
        self.ui.progressBar.hide()
        self._updateButtons()
        if job.summary is not None:
            with slicer.util.tryWithErrorDisplay(_("Cannot show the results."), waitCursor=True):
                self.ui.statusLabel.text = showResult(job.summary)
        elif job.error:
            self.ui.statusLabel.text = _("Failed: nothing was changed.")
            slicer.util.errorDisplay(_("Lymph Node MTL failed: {error}").format(error=job.error))
        else:
            self.ui.statusLabel.text = _("Cancelled: nothing was changed.")


#
# LymphNodeMTLLogic
#


class LymphNodeMTLLogic(ScriptedLoadableModuleLogic):
    """MRML <-> the engine's types, the engine being the inference server. Usable without the widget:

        logic = LymphNodeMTLLogic()
        summary = logic.process(ctNode, seedsNode)           # segmentation + table nodes
        logic.reclassify(ctNode, summary.segmentationNode, summary.tableNode)
        logic.addClick(ctNode, summary.segmentationNode, "1", (r, a, s), positive=False)  # refine; logic.undo

    Each run is a job: planned on the main thread (MRML read), computed by the server, applied on
    the main thread (MRML written) from a timer tick; `waitForCompletion=False` returns the job for
    the caller to tick. Where the server is, and its life cycle, is `self.server` (ServerSession).
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.server = ServerSession()
        self.serverInfo = {}  # the last health answer (model id, labels, clinical use)
        self._volumes = VolumeCache()  # an unchanged CT is one array, hashed once
        self.refinements = node_refinement.RefinementHistory()  # each node's undo stack

    def getParameterNode(self):
        return LymphNodeMTLParameterNode(super().getParameterNode())

    def setServer(self, url: str, token: str = "") -> None:
        """"local" (a server process on this computer) or a server's address, with its token."""
        self.server.setServer(url, token)

    def localServer(self):
        return self.server.localServer()

    def waitForJob(self, job: ModuleJob, timeout: Optional[float] = None) -> RunSummary:
        """Tick the job until it ends (scripts, tests, the self-test); its summary, or raise."""
        return self.server.waitForJob(job, timeout)

    def _startJob(self, case: Case, job: dict, apply, plan, watched: dict, label: str, modelFolder, device,
                  discard=None):
        """The server job for `job` on the plan's CT; its results are applied on its finishing tick."""
        serverJob = self.server.job(self._volumes.payload(case), job, modelFolder, device)

        def applyResults(results):
            self.serverInfo = serverJob.health or self.serverInfo
            return apply(plan, results)

        return ModuleJob(serverJob, applyResults, watched, label, discard)

    def _labels(self):
        labels = self.serverInfo.get("labels")
        return tuple(labels) if labels else results_table.DEFAULT_LABELS

    # --- MRML -> Lib -----------------------------------------------------------------------------
    def caseFromNodes(self, volumeNode, markupsNode=None) -> Case:
        """The CT (a copy the server job may own) with its IJK->world matrix, and the seeds."""
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise InputError("select a CT volume that has image data")
        image = self._volumes.image(volumeNode)
        geometry = VolumeGeometry(volume_cache.ijkToWorld(volumeNode), image.shape)
        seeds = seed_markups.seedsFromMarkups(markupsNode) if markupsNode is not None else []
        return Case(image, geometry, seeds, {"volume": volumeNode.GetName()})

    @staticmethod
    def initializeSeedsNode(markupsNode) -> None:
        """Number new seeds 1, 2, 3... so that node ids are short."""
        if markupsNode is not None:
            markupsNode.SetControlPointLabelFormat("%d")

    # --- Apply: segment and classify new nodes ----------------------------------------------------
    def process(self, volumeNode, markupsNode, segmentationNode=None, tableNode=None, modelFolder=None,
                device="auto", overwriteEdited=False, waitForCompletion=True):
        """Segment and classify every seed that has no segment yet (or whose seed moved); create or
        update ONE segmentation node and ONE table node. Segments the radiologist edited are kept
        unless overwriteEdited. Returns the RunSummary, or the running ModuleJob when not waiting."""
        plan = self.planPrediction(volumeNode, markupsNode, segmentationNode, tableNode, overwriteEdited)
        job = self.startPrediction(plan, modelFolder, device)
        return self.waitForJob(job) if waitForCompletion else job

    def startPrediction(self, plan: PredictionPlan, modelFolder=None, device="auto") -> ModuleJob:
        watched = {"CT": plan.volumeNode, "output segmentation": plan.segmentationNode,
                   "output table": plan.tableNode}
        if not plan.case.seeds:
            return ModuleJob(NothingToDo(), lambda results: self.applyPrediction(plan, results), watched, "predict")
        return self._startJob(plan.case, predict_job(plan.case.seeds), self.applyPrediction, plan, watched,
                              "predict", modelFolder, device)

    def planPrediction(self, volumeNode, markupsNode, segmentationNode=None, tableNode=None,
                       overwriteEdited=False) -> PredictionPlan:
        """Main thread: read the CT and seeds, decide which seeds to predict."""
        if markupsNode is None:
            raise InputError("select the seeds (a point list with one point per node)")
        case = self.caseFromNodes(volumeNode, markupsNode)
        case.validate()  # the CT (core/ct_plausibility.py) and all seeds, before any work
        existing = self.lymphNodeSegments(segmentationNode) if segmentationNode else {}
        plan = PredictionPlan(volumeNode, segmentationNode, tableNode, case)
        toPredict = []
        for seed in case.seeds:
            segmentId = existing.get(seed.node_id)
            if segmentId is None:
                toPredict.append(seed)
                continue
            tags = node_segments.tagsOf(segmentationNode.GetSegmentation().GetSegment(segmentId))
            moved = node_segments.seedMoved(tags, seed)
            if not moved and not overwriteEdited:
                plan.keptIds.append(seed.node_id)  # nothing to do: same seed, engine's own mask
            elif node_segments.isEdited(tags, self.segmentMask(segmentationNode, segmentId, volumeNode)):
                if overwriteEdited:
                    plan.replaceSegmentIds[seed.node_id] = segmentId
                    toPredict.append(seed)
                else:
                    plan.keptIds.append(seed.node_id)
                    plan.keptEditedIds.append(seed.node_id)
            elif moved:
                plan.replaceSegmentIds[seed.node_id] = segmentId
                toPredict.append(seed)
            else:
                plan.keptIds.append(seed.node_id)
        plan.case = Case(case.image, case.geometry, toPredict, case.metadata)
        return plan

    def applyPrediction(self, plan: PredictionPlan, results) -> RunSummary:
        """Main thread: write the results into the segmentation and table nodes."""
        volumeNode = plan.volumeNode
        if volumeNode.GetScene() is None:
            raise InputError("the CT was removed from the scene while it was being processed")
        segmentationNode, tableNode = output_nodes.outputNodes(plan.segmentationNode, plan.tableNode, volumeNode)
        modified = segmentationNode.StartModify()
        try:
            for result in results:
                node_segments.writeSegment(segmentationNode, volumeNode, result, MODULE_TERMINOLOGY,
                                           plan.replaceSegmentIds.get(result.node_id))
        finally:
            segmentationNode.EndModify(modified)
        results_table.syncTable(tableNode, segmentationNode, {r.node_id: r for r in results}, self._labels())
        output_nodes.placeNextToVolume(volumeNode, segmentationNode, tableNode)
        return RunSummary(segmentationNode, tableNode, [r.node_id for r in results], plan.keptIds,
                          plan.keptEditedIds, results=list(results))

    # --- Re-classify: probabilities from the radiologist's masks ----------------------------------
    def reclassify(self, volumeNode, segmentationNode, tableNode=None, modelFolder=None, device="auto",
                   segmentIds=None, waitForCompletion=True):
        """Re-classify nodes from their current masks; masks are left untouched.

        By default every lymph-node segment whose mask differs from the one the engine wrote (or
        that the engine did not write) is re-classified; unedited segments keep the engine's own
        prediction. Pass segmentIds to re-classify exactly those segments.
        """
        plan = self.planReclassification(volumeNode, segmentationNode, tableNode, segmentIds)
        job = self.startReclassification(plan, modelFolder, device)
        return self.waitForJob(job) if waitForCompletion else job

    def startReclassification(self, plan: ReclassificationPlan, modelFolder=None, device="auto",
                              apply=None) -> ModuleJob:
        """apply(plan, results): what the new facts update (default applyReclassification)."""
        apply = apply or self.applyReclassification
        watched = {"CT": plan.volumeNode, "segmentation": plan.segmentationNode, "output table": plan.tableNode}
        if not plan.results:
            return ModuleJob(NothingToDo(), lambda results: apply(plan, results), watched, "classify")
        return self._startJob(plan.case, classify_job(plan.results), apply, plan, watched, "classify",
                              modelFolder, device)

    def planReclassification(self, volumeNode, segmentationNode, tableNode=None, segmentIds=None):
        """Main thread: read the masks of the segments to re-classify."""
        if segmentationNode is None:
            raise InputError("select the lymph-node segmentation to re-classify")
        case = self.caseFromNodes(volumeNode)
        wanted = set(segmentIds) if segmentIds is not None else None
        plan = ReclassificationPlan(volumeNode, segmentationNode, tableNode, case, [], {})
        for nodeId, segmentId in self.lymphNodeSegments(segmentationNode).items():
            if wanted is not None and segmentId not in wanted:
                continue
            mask = self.segmentMask(segmentationNode, segmentId, volumeNode)
            tags = node_segments.tagsOf(segmentationNode.GetSegmentation().GetSegment(segmentId))
            if wanted is None and not node_segments.isEdited(tags, mask):
                continue
            if not mask.any():
                plan.skippedEmptyIds.append(nodeId)
                continue
            plan.results.append(node_segments.resultFromMask(tags, mask, case.geometry))
            plan.segmentIds[nodeId] = segmentId
        return plan

    def applyReclassification(self, plan: ReclassificationPlan, results) -> RunSummary:
        """Main thread: new probabilities and measurements into tags and table; masks untouched."""
        segmentation = plan.segmentationNode.GetSegmentation()
        for result in results:
            segment = segmentation.GetSegment(plan.segmentIds[result.node_id])
            # the recorded checksum stays the engine's mask: the segment stays "edited"
            node_segments.setSegmentFacts(segment, result, MODULE_TERMINOLOGY,
                                          node_segments.tagsOf(segment).mask_checksum)
        tableNode = output_nodes.outputTable(plan.tableNode, plan.segmentationNode, plan.volumeNode)
        results_table.syncTable(tableNode, plan.segmentationNode, {r.node_id: r for r in results}, self._labels())
        output_nodes.placeNextToVolume(plan.volumeNode, tableNode)
        return RunSummary(plan.segmentationNode, tableNode, [r.node_id for r in results],
                          skippedEmptyIds=plan.skippedEmptyIds, results=list(results), verb="re-classified")

    # --- Refine: prompts on one node, each answered by the server -------------------------------
    def addClick(self, volumeNode, segmentationNode, nodeId, ras, positive=True, tableNode=None,
                 modelFolder=None, device="auto", replaceEdited=False, waitForCompletion=True):
        """A positive or negative click (world RAS) on node `nodeId`: its mask is refined from all its
        prompts in order; a segment edited by hand is replaced only with replaceEdited. Returns the
        RunSummary, or the running ModuleJob when not waiting."""
        change = node_refinement.newClick(segmentationNode, nodeId, ras, positive)
        plan = self.planPrompt(volumeNode, segmentationNode, tableNode, nodeId, change)
        job = self.startRefinement(plan, modelFolder, device, replaceEdited)
        return self.waitForJob(job) if waitForCompletion else job

    def drawLine(self, volumeNode, segmentationNode, ends, nodeId=None, tableNode=None, modelFolder=None,
                 device="auto", replaceEdited=False, waitForCompletion=True):
        """A long axis (two world RAS ends) on node `nodeId`, or, with no node, a new node it draws."""
        line = prompt_markups.newPromptNode(prompt_markups.LINE, ends=ends)
        change = node_refinement.lineChange(segmentationNode, nodeId, line)
        job = self.startRefinement(self.planPrompt(volumeNode, segmentationNode, tableNode, nodeId, change),
                                   modelFolder, device, replaceEdited)
        return self.waitForJob(job) if waitForCompletion else job

    def planPrompt(self, volumeNode, segmentationNode, tableNode, nodeId, change):
        """Main thread: a prompt just placed (node_refinement.clickChange, lineChange); its refinement."""
        return node_refinement.planRefinement(volumeNode, segmentationNode, tableNode,
                                              lambda: self.caseFromNodes(volumeNode), nodeId, change)

    def startRefinement(self, plan, modelFolder=None, device="auto", replaceEdited=False) -> ModuleJob:
        """The refine job for the node's whole prompt list; a failure takes the new prompt away."""
        node_refinement.requireConfirmation(plan, replaceEdited)
        watched = {"CT": plan.volumeNode, "segmentation": plan.segmentationNode, "output table": plan.tableNode,
                   "prompt": plan.change.markupsNode}
        return self._startJob(plan.case, refine_job([plan.prompts]), self.applyRefinement, plan, watched,
                              "refine", modelFolder, device, plan.change.discard)

    def applyRefinement(self, plan, results) -> RunSummary:
        """Main thread: the node's new mask, tags and row; what they were is kept for Undo."""
        node_refinement.checkUnchanged(plan)
        (result,) = [r for r in results if r.node_id == plan.nodeId]
        segmentationNode, tableNode = output_nodes.outputNodes(plan.segmentationNode, plan.tableNode,
                                                               plan.volumeNode)
        node_segments.writeSegment(segmentationNode, plan.volumeNode, result, MODULE_TERMINOLOGY,
                                   plan.snapshot.segmentId)
        results_table.syncTable(tableNode, segmentationNode, {result.node_id: result}, self._labels())
        output_nodes.placeNextToVolume(plan.volumeNode, segmentationNode, tableNode)
        plan.change.commit(segmentationNode, plan.nodeId, plan.drawsNode)
        self.refinements.push(node_refinement.RefinementStep(plan, segmentationNode, tableNode, result))
        return RunSummary(segmentationNode, tableNode, [result.node_id], results=[result], verb="refined")

    def planUndo(self, segmentationNode, nodeId):
        """The node's last refinement; its `confirmation` is set when the segment was edited by hand."""
        return node_refinement.planUndo(self.refinements, segmentationNode, nodeId)

    def undo(self, segmentationNode, nodeId, replaceEdited=False, plan=None) -> str:
        """The node's last refinement undone: mask, tags and row as they were, its prompt taken away."""
        return node_refinement.undo(self.refinements, plan or self.planUndo(segmentationNode, nodeId),
                                    self._labels(), replaceEdited)

    # --- Follow-up: the baseline nodes carried into a later CT, both time points ------------------
    def followUp(self, baselineVolume, baselineSegmentation, followUpVolume, tableNode=None, modelFolder=None,
                 device="auto", waitForCompletion=True):
        """The baseline segmentation's nodes carried into the follow-up CT by the server: a follow-up segmentation
        and a table of both time points (follow_up_nodes.py). The RunSummary, or the running ModuleJob."""
        segmentIds = list(self.lymphNodeSegments(baselineSegmentation).values()) if baselineSegmentation else None
        plan = follow_up_nodes.planFollowUp(self.planReclassification(baselineVolume, baselineSegmentation, None,
                                                                      segmentIds), followUpVolume, tableNode)
        baseline = self._volumes.payload(plan.baseline.case)  # before the follow-up CT replaces the cached one
        serverJob = FollowUpServerJob(lambda volume, body: self.server.job(volume, body, modelFolder, device),
                                      baseline, self._volumes.payload(self.caseFromNodes(followUpVolume)),
                                      follow_up_job(baseline.volume_id, plan.baseline.results))
        job = ModuleJob(serverJob, lambda results: follow_up_nodes.applyFollowUp(
            plan, serverJob.summary, results, MODULE_TERMINOLOGY), plan.watched(), "follow_up")
        return self.waitForJob(job) if waitForCompletion else job

    def remeasureFollowUp(self, tableNode, modelFolder=None, device="auto", waitForCompletion=True):
        """Follow-up segments corrected since their row was written (edited, or refined by clicks)
        classified and measured again: their follow-up columns and the suggested response updated."""
        nodes = follow_up_nodes.follow_up_table.references(tableNode)
        plan = self.planReclassification(nodes["followUpVolume"], nodes["followUpSegmentation"], tableNode,
                                         follow_up_nodes.correctedSegmentIds(tableNode))
        job = self.startReclassification(plan, modelFolder, device, lambda plan, results: (
            follow_up_nodes.applyRemeasure(plan, results, MODULE_TERMINOLOGY)))
        return self.waitForJob(job) if waitForCompletion else job

    # --- segments --------------------------------------------------------------------------------
    @staticmethod
    def lymphNodeSegments(segmentationNode) -> dict:
        """Node id -> segment id, in segment order, for segments carrying our seed-id tag."""
        return node_segments.lymphNodeSegments(segmentationNode)

    @staticmethod
    def segmentMask(segmentationNode, segmentId, volumeNode) -> np.ndarray:
        """The segment as a boolean array on the CT's voxel grid."""
        return node_segments.segmentMask(segmentationNode, segmentId, volumeNode)

    def isSegmentEdited(self, segmentationNode, segmentId, volumeNode) -> bool:
        """True when the mask is not the one the engine wrote (or the engine never wrote it)."""
        return node_segments.isSegmentEdited(segmentationNode, segmentId, volumeNode)

    def resultsFromSegments(self, volumeNode, segmentationNode) -> list:
        """Every lymph-node segment as a NodeResult: its current mask plus the facts in its tags."""
        geometry = self.caseFromNodes(volumeNode).geometry
        segmentation = segmentationNode.GetSegmentation()
        return [node_segments.resultFromMask(node_segments.tagsOf(segmentation.GetSegment(segmentId)),
                                             self.segmentMask(segmentationNode, segmentId, volumeNode), geometry)
                for segmentId in self.lymphNodeSegments(segmentationNode).values()]

    def setShow3D(self, segmentationNode, show: bool) -> None:
        output_nodes.showIn3D(segmentationNode, show)

    @staticmethod
    def tableRows(tableNode) -> dict:
        """Node id -> {column: value} of a results table (text columns str, numeric ones float)."""
        return results_table.tableRows(tableNode)

    # --- navigation ------------------------------------------------------------------------------
    def jumpToNode(self, tableNode, row: int, segmentationNode=None):
        """Centre the slice views on the node in table row `row` and select its segment."""
        return node_navigation.jumpToNode(tableNode, row, segmentationNode)

    def jumpToNodeId(self, segmentationNode, nodeId: str):
        """Returns (segment id, RAS centre) of the node, or None when it has no segment."""
        return node_navigation.jumpToNodeId(segmentationNode, nodeId)

    # --- export ----------------------------------------------------------------------------------
    def exportResults(self, segmentationNode, tableNode, volumeNode, folder) -> dict:
        """nodes.seg.nrrd, nodes.csv and (with a DICOM SEG writer) nodes.dcm in folder."""
        if segmentationNode is None:
            raise InputError("nothing to export: run Apply first")
        # the volume's own grid (not world): DICOM positions are those of the source images
        geometry = VolumeGeometry(volume_cache.ijkToLocal(volumeNode), slicer.util.arrayFromVolume(volumeNode).shape)
        return result_export.exportResults(segmentationNode, volumeNode,
                                           self.resultsFromSegments(volumeNode, segmentationNode), geometry,
                                           folder, bool(self.serverInfo.get("clinical_use", False)))


#
# LymphNodeMTLTest
#


class LymphNodeMTLTest(ScriptedLoadableModuleTest):
    """The full path on a phantom CT: process, edit, re-classify, refine with a click and undo it, add
    a seed, process again, with the local inference server (started on first use)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_PhantomEndToEnd()

    def skipWithoutServerPackages(self):
        """ctest loads test methods by name: each one skips itself when the engine cannot run."""
        missing = dependency_installer.missingRequirements()
        if missing:
            self.skipTest("the local inference server needs " + "; ".join(missing.values())
                          + ": open the module and press Apply once to install them")

    def test_PhantomEndToEnd(self):
        self.skipWithoutServerPackages()
        from LymphNodeMTLLib.phantoms.case_generator import generate_phantom_case

        self.delayDisplay("Generating a phantom CT with three nodes")
        phantom = generate_phantom_case(np.random.default_rng(7), 3, spacing=(1.0, 1.0, 2.0),
                                        direction=np.eye(3), field_of_view_mm=(112.0, 112.0, 80.0))
        volume = slicer.util.addVolumeFromArray(np.round(phantom.image).astype(np.int16),
                                                phantom.geometry.ijk_to_ras, name="Phantom CT")
        seeds = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Seeds")
        for node in phantom.nodes[:2]:
            seeds.AddControlPoint(*node.seed_ras, node.node_id)

        self.delayDisplay("Segmenting two nodes")
        logic = LymphNodeMTLLogic()
        summary = logic.process(volume, seeds, device="cpu")
        segmentationNode, tableNode = summary.segmentationNode, summary.tableNode
        segments = logic.lymphNodeSegments(segmentationNode)
        self.assertEqual(list(segments), [n.node_id for n in phantom.nodes[:2]])
        self.assertEqual(tableNode.GetNumberOfRows(), 2)
        self.assertTrue(tableNode.GetUseColumnTitleAsColumnHeader())
        for result in summary.results:
            segment = segmentationNode.GetSegmentation().GetSegment(segments[result.node_id])
            self.assertEqual(segment.GetName(), f"LN {result.node_id}")
            self.assertIn("59441001", segment.GetTerminology())
            mask = logic.segmentMask(segmentationNode, segments[result.node_id], volume)
            self.assertTrue(np.array_equal(mask, result.full_mask(mask.shape)))

        self.delayDisplay("Editing node 1 and re-classifying it")
        first = phantom.nodes[0].node_id
        edited = self.eraseHalf(logic.segmentMask(segmentationNode, segments[first], volume))
        slicer.util.updateSegmentBinaryLabelmapFromArray(edited.astype(np.uint8), segmentationNode,
                                                         segments[first], volume)
        before = logic.tableRows(tableNode)
        reclassified = logic.reclassify(volume, segmentationNode, tableNode, device="cpu")
        self.assertEqual(reclassified.updatedIds, [first])
        after = logic.tableRows(tableNode)
        second = phantom.nodes[1].node_id
        self.assertEqual(repr(after[second]), repr(before[second]))  # repr: NaN equals NaN
        self.assertTrue(np.array_equal(logic.segmentMask(segmentationNode, segments[first], volume), edited))

        self.delayDisplay("Refining node 2 with a click, then undoing it")
        unrefined = logic.segmentMask(segmentationNode, segments[second], volume)
        click = np.add(phantom.nodes[1].seed_ras, (1.5, 0.0, 0.0))
        self.assertEqual(logic.addClick(volume, segmentationNode, second, click, device="cpu").updatedIds, [second])
        logic.undo(segmentationNode, second)
        self.assertTrue(np.array_equal(logic.segmentMask(segmentationNode, segments[second], volume), unrefined))
        self.assertEqual(repr(logic.tableRows(tableNode)[second]), repr(after[second]))

        self.delayDisplay("Adding a third seed: only it is processed")
        third = phantom.nodes[2]
        seeds.AddControlPoint(*third.seed_ras, third.node_id)
        again = logic.process(volume, seeds, segmentationNode, tableNode, device="cpu")
        self.assertEqual(again.updatedIds, [third.node_id])
        self.assertEqual(tableNode.GetNumberOfRows(), 3)
        self.assertTrue(np.array_equal(logic.segmentMask(segmentationNode, segments[first], volume), edited))
        self.delayDisplay("Test passed")

    @staticmethod
    def eraseHalf(mask):
        """A radiologist's edit: drop the far half of the mask along its longest extent."""
        extents = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
                   for axis in range(3)]
        axis = int(np.argmax([len(e) for e in extents]))
        cut = [slice(None)] * 3
        cut[axis] = slice(extents[axis][len(extents[axis]) // 2], None)
        edited = mask.copy()
        edited[tuple(cut)] = False
        return edited
