"""LymphNodeMTL: lymph-node masks and metastasis probabilities from seeds, inside 3D Slicer.

Module (description), Widget (Qt wiring only), Logic (MRML <-> the inference server) and Test (the
self-test Slicer's test runner calls). The engine runs in an inference server process, local by
default (started with Slicer's own Python) or a shared GPU server: Slicer's Python never runs
torch, and nothing runs on a Python thread. The Slicer-side helpers (results table, dependency
installer, server process, HTTP client) live in LymphNodeMTLSlicerLib.
"""

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import qt
import slicer
import vtk
from LymphNodeMTLLib.core.case import Case, Seed
from LymphNodeMTLLib.core.errors import InputError
from LymphNodeMTLLib.core.geometry import VolumeGeometry
from LymphNodeMTLLib.core.mask_checksum import mask_bounds as _maskBounds
from LymphNodeMTLLib.core.mask_checksum import mask_checksum as maskChecksum
from LymphNodeMTLLib.core.node_result import NodeResult
from LymphNodeMTLLib.outputs import segmentation_writer as segw
from LymphNodeMTLLib.outputs.results_table import write_results_csv
from LymphNodeMTLLib.server import protocol
from LymphNodeMTLSlicerLib import dependency_installer, results_table
from LymphNodeMTLSlicerLib.module_job import JobCancelled, JobFailed, ModuleJob, NothingToDo
from LymphNodeMTLSlicerLib.results_table import TABLE_SEGMENTATION_REFERENCE
from LymphNodeMTLSlicerLib.run_plans import PredictionPlan, ReclassificationPlan, RunSummary
from LymphNodeMTLSlicerLib.server_client import (
    BlockingTransport,
    QtTransport,
    ServerConnection,
    ServerJob,
    VolumePayload,
)
from LymphNodeMTLSlicerLib.server_process import FAILED as SERVER_FAILED
from LymphNodeMTLSlicerLib.server_process import READY as SERVER_READY
from LymphNodeMTLSlicerLib.server_process import LocalServer
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
from vtk.util import numpy_support

# Segment tag holding a checksum of the mask the engine wrote: a different mask means edited.
TAG_MASK_HASH = segw.TAG_MASK_HASH
# Segment tag with the SHA-256 of the weights that made the segment (DICOM SEG records it).
TAG_WEIGHTS_SHA256 = segw.TAG_WEIGHTS_SHA256
SEED_MOVED_MM = 0.01  # a seed further than this from the one a segment was made from has moved
LOCAL_SERVER = "local"  # the server setting for a server process on this computer
SETTINGS_SERVER_URL = "LymphNodeMTL/serverUrl"
SETTINGS_SERVER_TOKEN = "LymphNodeMTL/serverToken"
TERMINOLOGY_FILE = Path(__file__).resolve().parent / "Resources" / "LymphNodeMTL.term.json"
SLICER_DICOM_EXPORT = ("Slicer's own DICOM export also writes DICOM SEG: Data module, right-click the "
                       "segmentation, Export to DICOM (needs the QuantitativeReporting extension).")


def moduleTerminologyEntry() -> str:
    """The lymph-node terminology entry with the module's own terminology file as its context, so
    that segments point to the list the module loads (same SNOMED CT codes as the Lib's writer)."""
    context = json.loads(TERMINOLOGY_FILE.read_text(encoding="utf-8"))["SegmentationCategoryTypeContextName"]
    return "~".join([context, *segw.LYMPH_NODE_TERMINOLOGY.split("~")[1:]])


MODULE_TERMINOLOGY = moduleTerminologyEntry()


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
("LN &lt;id&gt;", coloured green to red by probability) and a table of status, probability (with
its interval), mask agreement, short and long axis, volume and mean HU, nodes to review first on
top. Edit a segment and press Re-classify to update its probability from your mask; add seeds and
press Apply again to process only the new nodes. Edited segments are never overwritten unless you
ask for it. The engine runs in an inference server: by default one on this computer (started on
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
        self._pollTimer.setInterval(int(self.logic.pollIntervalS * 1000))
        self._pollTimer.connect("timeout()", self._pollJob)

        # Server address and token are this computer's settings, not the scene's.
        settings = qt.QSettings()
        self.ui.serverUrlLineEdit.text = str(settings.value(SETTINGS_SERVER_URL, LOCAL_SERVER))
        self.ui.serverTokenLineEdit.text = str(settings.value(SETTINGS_SERVER_TOKEN, ""))

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

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job:
            self._job.cancel()
        if self._pollTimer:
            self._pollTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job:
            self._job.cancel()  # its nodes are about to disappear
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
            p.device = str(settings.value("LymphNodeMTL/device", "auto"))
            p.modelFolder = str(settings.value("LymphNodeMTL/modelFolder", ""))

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
        settings = qt.QSettings()
        url = self.ui.serverUrlLineEdit.text.strip() or LOCAL_SERVER
        token = self.ui.serverTokenLineEdit.text.strip()
        for key, value in (("LymphNodeMTL/device", p.device), ("LymphNodeMTL/modelFolder", p.modelFolder),
                           (SETTINGS_SERVER_URL, url), (SETTINGS_SERVER_TOKEN, token)):
            settings.setValue(key, value)
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
    """MRML <-> the inference server. Usable without the widget:

        logic = LymphNodeMTLLogic()
        summary = logic.process(ctNode, seedsNode)           # segmentation + table nodes
        logic.reclassify(ctNode, summary.segmentationNode, summary.tableNode)

    Each run is a job: planned on the main thread (MRML read), computed by the server, applied on
    the main thread (MRML written) from a timer tick; `waitForCompletion=False` returns the job for
    the caller to tick. The local server stays warm between runs; it is started again when it
    died, or when the device or model folder changes.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.serverUrl = LOCAL_SERVER
        self.serverToken = ""
        self.pollIntervalS = 0.1
        self.idle = None  # called between ticks while a script waits (default: events + sleep)
        self.transport = None  # QtTransport inside Slicer, BlockingTransport elsewhere
        self.serverInfo = {}  # the last health answer (model id, labels, device)
        self._imageCache = (None, None)  # (volume key, copy): an unchanged CT is one array
        self._payloadCache = (None, None)  # (volume key, VolumePayload): its content hash once

    def getParameterNode(self):
        return LymphNodeMTLParameterNode(super().getParameterNode())

    # --- server ----------------------------------------------------------------------------------
    def setServer(self, url: str, token: str = "") -> None:
        """"local" (a server process on this computer) or a server's address, with its token."""
        self.serverUrl = (url or LOCAL_SERVER).strip()
        self.serverToken = token or ""

    @staticmethod
    def insideSlicerApp() -> bool:
        return hasattr(getattr(slicer, "app", None), "processEvents")

    def localServer(self) -> LocalServer:
        from LymphNodeMTLSlicerLib.server_process import sharedLocalServer

        return sharedLocalServer(self.insideSlicerApp())

    def _transportInUse(self):
        if self.transport is None:
            self.transport = QtTransport() if self.insideSlicerApp() else BlockingTransport()
        return self.transport

    def _connector(self, modelFolder, device):
        """(connect, unreachable) for a ServerJob; starts the local server when it is not running."""
        if self.serverUrl != LOCAL_SERVER:
            connection = ServerConnection(self.serverUrl, self.serverToken, self._transportInUse())
            return (lambda: connection), None
        server = self.localServer()
        server.ensure(device, modelFolder)

        def connect():
            state = server.poll()
            if state == SERVER_READY:
                return ServerConnection(server.url, server.token, self._transportInUse(),
                                        "the local inference server")
            if state == SERVER_FAILED:
                raise RuntimeError(f"{server.error}; press Apply again to retry")
            return None  # still starting

        return connect, server.unreachableMessage

    def _serverJob(self, case: Case, request: dict, modelFolder, device):
        connect, unreachable = self._connector(modelFolder, device)
        return ServerJob(connect, self._payload(case), request, unreachable)

    def waitForJob(self, job: ModuleJob, timeout: Optional[float] = None) -> RunSummary:
        """Tick the job until it ends (scripts, tests, the self-test); its summary, or raise."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            job.tick()
            if job.finished:
                break
            if end is not None and time.monotonic() > end:
                job.cancel()
                raise JobFailed(f"the job did not finish within {timeout:.0f} s; it was cancelled")
            self._idle()
        if job.error:
            raise JobFailed(job.error)
        if job.summary is None:
            raise JobCancelled("cancelled: nothing was changed")
        return job.summary

    def _idle(self) -> None:
        if self.idle is not None:
            self.idle()
            return
        if self.insideSlicerApp():
            slicer.app.processEvents()  # network replies and process output arrive through Qt
        time.sleep(self.pollIntervalS)

    def _labels(self):
        labels = self.serverInfo.get("labels")
        return tuple(labels) if labels else results_table.DEFAULT_LABELS

    # --- MRML -> Lib -----------------------------------------------------------------------------
    def caseFromNodes(self, volumeNode, markupsNode=None) -> Case:
        """The CT (a copy the server job may own) with its IJK->world matrix, and the seeds."""
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise InputError("select a CT volume that has image data")
        image = self._imageOf(volumeNode)
        geometry = VolumeGeometry(self._ijkToWorld(volumeNode), image.shape)
        seeds = self.seedsFromMarkups(markupsNode) if markupsNode is not None else []
        return Case(image, geometry, seeds, {"volume": volumeNode.GetName()})

    @staticmethod
    def _volumeKey(volumeNode):
        imageData = volumeNode.GetImageData()
        scalars = imageData.GetPointData().GetScalars()
        return (volumeNode.GetID(), imageData.GetMTime(), scalars.GetMTime() if scalars else 0,
                imageData.GetDimensions())

    def _imageOf(self, volumeNode) -> np.ndarray:
        """A copy of the voxels in a sample type the server takes (the CT's own when it can),
        made again only when the volume changed: repeated runs on one CT send one array, once."""
        key = self._volumeKey(volumeNode)
        if self._imageCache[0] != key:
            self._imageCache = (None, None)  # release the old copy first
            voxels = slicer.util.arrayFromVolume(volumeNode)
            dtype = voxels.dtype if voxels.dtype.name in protocol.DTYPES else np.float32
            self._imageCache = (key, np.array(voxels, dtype=dtype))
        return self._imageCache[1]

    def _payload(self, case: Case) -> VolumePayload:
        """The CT as the server names it; the content hash is computed once per CT and geometry."""
        key = (self._imageCache[0], case.geometry.ijk_to_ras.tobytes())
        if self._payloadCache[0] != key or self._payloadCache[1].image is not case.image:
            self._payloadCache = (key, VolumePayload(case.image, case.geometry.ijk_to_ras))
        return self._payloadCache[1]

    @staticmethod
    def _ijkToWorld(volumeNode) -> np.ndarray:
        """IJK -> world RAS: the volume's matrix under its (linear) parent transforms."""
        ijkToRas = LymphNodeMTLLogic._ijkToLocal(volumeNode)
        transformNode = volumeNode.GetParentTransformNode()
        if transformNode is not None:
            if not transformNode.IsTransformToWorldLinear():
                raise InputError(f"the CT '{volumeNode.GetName()}' is under a non-linear transform; "
                                 "harden the transform first (Data module, right-click, Harden transform)")
            toWorld = vtk.vtkMatrix4x4()
            transformNode.GetMatrixTransformToWorld(toWorld)
            ijkToRas = slicer.util.arrayFromVTKMatrix(toWorld) @ ijkToRas
        return ijkToRas

    @staticmethod
    def seedsFromMarkups(markupsNode) -> list:
        """Placed control points in world RAS; id = the point's label, or its 1-based index."""
        seeds = []
        for index in range(markupsNode.GetNumberOfControlPoints()):
            if markupsNode.GetNthControlPointPositionStatus(index) != markupsNode.PositionDefined:
                continue  # a point still being placed
            ras = [0.0, 0.0, 0.0]
            markupsNode.GetNthControlPointPositionWorld(index, ras)
            label = markupsNode.GetNthControlPointLabel(index).strip() or str(index + 1)
            seeds.append(Seed(label, (float(ras[0]), float(ras[1]), float(ras[2]))))
        return seeds

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
        """The server job for the plan's seeds; its results are applied on its finishing tick."""
        seeds = [{"id": s.node_id, "ras": [float(v) for v in s.ras]} for s in plan.case.seeds]
        serverJob = (self._serverJob(plan.case, {"kind": "predict", "seeds": seeds, "options": {}},
                                     modelFolder, device) if seeds else NothingToDo())
        return ModuleJob(serverJob, lambda results: self._applyWith(serverJob, self.applyPrediction, plan, results),
                         {"CT": plan.volumeNode, "output segmentation": plan.segmentationNode,
                          "output table": plan.tableNode}, "predict")

    def _applyWith(self, serverJob, apply, plan, results):
        if serverJob.health:
            self.serverInfo = serverJob.health
        return apply(plan, results)
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
            segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
            moved = self._seedMoved(segment, seed)
            if not moved and not overwriteEdited:
                plan.keptIds.append(seed.node_id)  # nothing to do: same seed, engine's own mask
            elif self.isSegmentEdited(segmentationNode, segmentId, volumeNode):
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
        segmentationNode = plan.segmentationNode
        if segmentationNode is None:
            segmentationNode = self._newSegmentationNode(volumeNode)
        tableNode = self._outputTable(plan.tableNode, segmentationNode, volumeNode)
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        modified = segmentationNode.StartModify()
        try:
            for result in results:
                self._writeSegment(segmentationNode, volumeNode, result,
                                   plan.replaceSegmentIds.get(result.node_id))
        finally:
            segmentationNode.EndModify(modified)
        self._syncTable(tableNode, segmentationNode, {r.node_id: r for r in results})
        for node in (segmentationNode, tableNode):
            self._placeNextToVolume(node, volumeNode)
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

    def startReclassification(self, plan: ReclassificationPlan, modelFolder=None, device="auto") -> ModuleJob:
        masks = [protocol.mask_to_json(result) for result in plan.results]
        serverJob = (self._serverJob(plan.case, {"kind": "classify", "masks": masks, "options": {}},
                                     modelFolder, device) if masks else NothingToDo())
        return ModuleJob(serverJob,
                         lambda results: self._applyWith(serverJob, self.applyReclassification, plan, results),
                         {"CT": plan.volumeNode, "segmentation": plan.segmentationNode,
                          "output table": plan.tableNode}, "classify")

    def planReclassification(self, volumeNode, segmentationNode, tableNode=None, segmentIds=None):
        """Main thread: read the masks of the segments to re-classify."""
        if segmentationNode is None:
            raise InputError("select the lymph-node segmentation to re-classify")
        case = self.caseFromNodes(volumeNode)
        segments = self.lymphNodeSegments(segmentationNode)
        wanted = set(segmentIds) if segmentIds is not None else None
        plan = ReclassificationPlan(volumeNode, segmentationNode, tableNode, case, [], {})
        for nodeId, segmentId in segments.items():
            if wanted is not None and segmentId not in wanted:
                continue
            mask = self.segmentMask(segmentationNode, segmentId, volumeNode)
            if wanted is None and self._maskChecksumTag(segmentationNode, segmentId) == maskChecksum(mask):
                continue  # unedited
            if not mask.any():
                plan.skippedEmptyIds.append(nodeId)
                continue
            result = self._resultFromMask(segmentationNode, segmentId, nodeId, mask, case.geometry)
            plan.results.append(result)
            plan.segmentIds[nodeId] = segmentId
        return plan

    def applyReclassification(self, plan: ReclassificationPlan, results) -> RunSummary:
        """Main thread: new probabilities and measurements into tags and table; masks untouched."""
        segmentation = plan.segmentationNode.GetSegmentation()
        for result in results:
            segment = segmentation.GetSegment(plan.segmentIds[result.node_id])
            maskHash = self._tag(segment, TAG_MASK_HASH)  # still the engine's: the segment stays "edited"
            self._setSegmentFacts(segment, result)
            segment.SetTag(TAG_MASK_HASH, maskHash)
        tableNode = self._outputTable(plan.tableNode, plan.segmentationNode, plan.volumeNode)
        self._syncTable(tableNode, plan.segmentationNode, {r.node_id: r for r in results})
        self._placeNextToVolume(tableNode, plan.volumeNode)
        return RunSummary(plan.segmentationNode, tableNode, [r.node_id for r in results],
                          skippedEmptyIds=plan.skippedEmptyIds, results=list(results), verb="re-classified")

    # --- segments --------------------------------------------------------------------------------
    def lymphNodeSegments(self, segmentationNode) -> dict:
        """Node id -> segment id, in segment order, for segments carrying our seed-id tag."""
        segmentation = segmentationNode.GetSegmentation()
        found = {}
        for index in range(segmentation.GetNumberOfSegments()):
            segmentId = segmentation.GetNthSegmentID(index)
            nodeId = self._tag(segmentation.GetSegment(segmentId), segw.TAG_SEED_ID, None)
            if nodeId is not None and nodeId not in found:
                found[nodeId] = segmentId
        return found

    def isSegmentEdited(self, segmentationNode, segmentId, volumeNode) -> bool:
        """True when the mask is not the one the engine wrote (or the engine never wrote it)."""
        recorded = self._maskChecksumTag(segmentationNode, segmentId)
        if not recorded:
            return True
        return recorded != maskChecksum(self.segmentMask(segmentationNode, segmentId, volumeNode))

    def _maskChecksumTag(self, segmentationNode, segmentId) -> str:
        return self._tag(segmentationNode.GetSegmentation().GetSegment(segmentId), TAG_MASK_HASH)

    @staticmethod
    def segmentMask(segmentationNode, segmentId, volumeNode) -> np.ndarray:
        """The segment as a boolean array on the CT's voxel grid."""
        return slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0

    def _seedMoved(self, segment, seed) -> bool:
        try:
            recorded = np.array(self._tag(segment, segw.TAG_SEED_RAS).split(), dtype=float)
        except ValueError:
            return True
        return recorded.shape != (3,) or float(np.linalg.norm(recorded - seed.ras)) > SEED_MOVED_MM

    def _writeSegment(self, segmentationNode, volumeNode, result: NodeResult, segmentId=None) -> str:
        segmentation = segmentationNode.GetSegmentation()
        if segmentId is None:
            segment = slicer.vtkSegment()
            segment.SetName(segw.segment_name(result.node_id))
            segment.SetNameAutoGenerated(False)
            segment.SetColorAutoGenerated(False)
            segmentId = segmentation.GenerateUniqueSegmentID(
                segw.segment_id(result.node_id, segmentation.GetNumberOfSegments()))
            segmentation.AddSegment(segment, segmentId)
        else:
            segmentation.ClearSegment(segmentId)
        if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            self._orientedMask(volumeNode, result), segmentationNode, segmentId,
            slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
        ):
            raise RuntimeError(f"could not write the mask of node {result.node_id}")
        segment = segmentation.GetSegment(segmentId)
        self._setSegmentFacts(segment, result)  # segment_tags include the mask checksum
        return segmentId

    def _setSegmentFacts(self, segment, result: NodeResult) -> None:
        """Terminology, colour by probability and the result tags, as the .seg.nrrd writer gives them."""
        tags = segw.segment_tags(result, result.extra.get("model_id", ""))
        tags[segw.TERMINOLOGY_TAG] = MODULE_TERMINOLOGY  # the list this module loads
        for key, value in tags.items():
            segment.SetTag(key, value)
        segment.SetColor(*segw.probability_color(result.probability))

    @staticmethod
    def _orientedMask(volumeNode, result: NodeResult):
        """The node's bounding-box mask as image data on the CT's own (local) voxel grid."""
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        image = slicer.vtkOrientedImageData()
        image.SetImageToWorldMatrix(ijkToRas)
        (k0, j0, i0), (nk, nj, ni) = result.bbox_start_kji, result.mask.shape
        image.SetExtent(i0, i0 + ni - 1, j0, j0 + nj - 1, k0, k0 + nk - 1)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        voxels[:] = np.asarray(result.mask, dtype=np.uint8).ravel()  # [k, j, i] order = VTK's
        return image

    def _resultFromMask(self, segmentationNode, segmentId, nodeId, mask, geometry) -> NodeResult:
        """A NodeResult holding a segment's current mask (bounding box + sub-array) and its seed."""
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        start, stop = _maskBounds(mask)
        try:
            seed = tuple(float(v) for v in self._tag(segment, segw.TAG_SEED_RAS).split())
        except ValueError:
            seed = ()
        if len(seed) != 3:  # not from the engine: the mask's centre stands in for the click
            seed = tuple(geometry.ijk_to_ras_points(np.argwhere(mask).mean(axis=0)[::-1])[0])
        sub = mask[tuple(slice(a, b) for a, b in zip(start, stop))].copy()
        return NodeResult(nodeId, seed, start, stop, sub)

    def resultsFromSegments(self, volumeNode, segmentationNode) -> list:
        """Every lymph-node segment as a NodeResult: its current mask plus the facts in its tags."""
        geometry = self.caseFromNodes(volumeNode).geometry
        results = []
        for nodeId, segmentId in self.lymphNodeSegments(segmentationNode).items():
            mask = self.segmentMask(segmentationNode, segmentId, volumeNode)
            result = self._resultFromMask(segmentationNode, segmentId, nodeId, mask, geometry)
            segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
            number = lambda key: results_table.toFloat(self._tag(segment, key))  # noqa: E731
            result.status = self._tag(segment, results_table.TAG_STATUS) or result.status
            usable = results_table.hasUsableMask(result.status)
            result.probability = number(segw.TAG_PROBABILITY) if usable else float("nan")
            result.probability_low = number(results_table.TAG_PROBABILITY_LOW) if usable else float("nan")
            result.probability_high = number(results_table.TAG_PROBABILITY_HIGH) if usable else float("nan")
            result.mask_agreement = number(results_table.TAG_MASK_AGREEMENT)
            predicted = self._tag(segment, segw.TAG_PREDICTED_LABEL)
            result.predicted_label = int(predicted) if predicted.isdigit() else 0
            result.volume_mm3 = number(segw.TAG_VOLUME)
            result.short_axis_mm = number(segw.TAG_SHORT_AXIS)
            result.long_axis_mm = number(segw.TAG_LONG_AXIS)
            result.mean_hu = number(segw.TAG_MEAN_HU)
            result.extra["model_id"] = self._tag(segment, segw.TAG_MODEL_ID)
            result.extra["weights_sha256"] = self._tag(segment, TAG_WEIGHTS_SHA256)
            results.append(result)
        return results

    def setShow3D(self, segmentationNode, show: bool) -> None:
        if show:
            segmentationNode.CreateClosedSurfaceRepresentation()
        else:
            segmentationNode.RemoveClosedSurfaceRepresentation()

    # --- output nodes ----------------------------------------------------------------------------
    def _newSegmentationNode(self, volumeNode):
        node = slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode",
            slicer.mrmlScene.GenerateUniqueName(f"{volumeNode.GetName()} lymph nodes"))
        node.CreateDefaultDisplayNodes()
        node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())  # overlay the CT exactly
        return node

    def _newTableNode(self, volumeNode):
        return slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLTableNode",
            slicer.mrmlScene.GenerateUniqueName(f"{volumeNode.GetName()} lymph nodes table"))

    def _outputTable(self, tableNode, segmentationNode, volumeNode):
        """The given table, else the one linked to the segmentation, else a new one."""
        if tableNode is None:
            tableNode = self._tableOf(segmentationNode)
        return tableNode if tableNode is not None else self._newTableNode(volumeNode)

    @staticmethod
    def _tableOf(segmentationNode):
        for node in slicer.util.getNodesByClass("vtkMRMLTableNode"):
            if node.GetNodeReferenceID(TABLE_SEGMENTATION_REFERENCE) == segmentationNode.GetID():
                return node
        return None

    def _placeNextToVolume(self, node, volumeNode) -> None:
        """Put `node` in the CT's study (its parent) in the subject hierarchy."""
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        if shNode is None:
            return
        volumeItem = shNode.GetItemByDataNode(volumeNode)
        if not volumeItem:
            volumeItem = shNode.CreateItem(shNode.GetSceneItemID(), volumeNode)
        parent = shNode.GetItemParent(volumeItem)
        item = shNode.GetItemByDataNode(node)
        if not item:
            shNode.CreateItem(parent, node)
        elif shNode.GetItemParent(item) != parent:
            shNode.SetItemParent(item, parent)

    def _syncTable(self, tableNode, segmentationNode, updated: dict) -> None:
        """One row per lymph-node segment (review-first order): `updated` results give new values,
        other rows keep theirs (or are rebuilt from the segment's tags when missing)."""
        old = results_table.tableRows(tableNode)
        segmentation = segmentationNode.GetSegmentation()
        labels = self._labels()
        rows = []
        for nodeId, segmentId in self.lymphNodeSegments(segmentationNode).items():
            if nodeId in updated:
                rows.append(results_table.rowFromResult(updated[nodeId], labels))
            elif nodeId in old:
                rows.append(old[nodeId])
            else:
                rows.append(results_table.rowFromTags(segmentation.GetSegment(segmentId), labels))
        results_table.writeTable(tableNode, rows, segmentationNode)

    @staticmethod
    def tableRows(tableNode) -> dict:
        """Node id -> {column: value} of a results table (text columns str, numeric ones float)."""
        return results_table.tableRows(tableNode)

    _tag = staticmethod(results_table.segmentTag)

    # --- navigation ------------------------------------------------------------------------------
    def jumpToNode(self, tableNode, row: int, segmentationNode=None):
        """Centre the slice views on the node in table row `row` and select its segment."""
        nodeId = results_table.nodeIdOfRow(tableNode, row)
        segmentationNode = segmentationNode or tableNode.GetNodeReference(TABLE_SEGMENTATION_REFERENCE)
        if segmentationNode is None:
            raise InputError("the table is not linked to a segmentation; run Apply again")
        return self.jumpToNodeId(segmentationNode, nodeId)

    def jumpToNodeId(self, segmentationNode, nodeId: str):
        """Returns (segment id, RAS centre) of the node, or None when it has no segment."""
        segmentId = self.lymphNodeSegments(segmentationNode).get(nodeId)
        if segmentId is None:
            return None
        center = segmentationNode.GetSegmentCenterRAS(segmentId)
        if center is None:  # empty segment: its seed
            center = tuple(float(v) for v in self._tag(
                segmentationNode.GetSegmentation().GetSegment(segmentId), segw.TAG_SEED_RAS).split())
        markups = getattr(slicer.modules, "markups", None)
        if markups is not None and hasattr(markups.logic(), "JumpSlicesToLocation"):
            markups.logic().JumpSlicesToLocation(*center, True)
        for editorNode in slicer.util.getNodesByClass("vtkMRMLSegmentEditorNode"):
            if editorNode.GetSegmentationNode() in (segmentationNode, None):
                editorNode.SetAndObserveSegmentationNode(segmentationNode)
                editorNode.SetSelectedSegmentID(segmentId)
        return segmentId, tuple(center)

    # --- export ----------------------------------------------------------------------------------
    def exportResults(self, segmentationNode, tableNode, volumeNode, folder) -> dict:
        """nodes.seg.nrrd, nodes.csv and (with a DICOM CT and a DICOM SEG writer) nodes.dcm in folder."""
        if segmentationNode is None:
            raise InputError("nothing to export: run Apply first")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        report = {"segmentation": None, "table": None, "dicomSeg": None, "messages": []}

        segPath = folder / "nodes.seg.nrrd"
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(segPath))
        storage.SetCropToMinimumExtent(False)  # the CT's whole grid, like the command line's file
        if not storage.WriteData(segmentationNode):
            raise RuntimeError(f"could not write {segPath}")
        report["segmentation"] = str(segPath)
        report["messages"].append(f"Segmentation: {segPath}")

        results = self.resultsFromSegments(volumeNode, segmentationNode)
        if results:  # the command line's nodes.csv: one writer, one format
            csvPath = write_results_csv(folder / "nodes.csv", results)
            report["table"] = str(csvPath)
            report["messages"].append(f"Table: {csvPath}")

        report["dicomSeg"], message = self._exportDicomSeg(segmentationNode, volumeNode, folder / "nodes.dcm")
        report["messages"].append(message)
        return report

    def _exportDicomSeg(self, segmentationNode, volumeNode, path):
        """DICOM SEG through the Lib's writer; (path or None, a line for the user)."""
        try:
            from LymphNodeMTLLib.outputs import dicom_seg_writer
        except ImportError:
            return None, "DICOM SEG: not written. " + dependency_installer.DICOM_SEG_NEEDS
        results = [r for r in self.resultsFromSegments(volumeNode, segmentationNode) if r.mask.any()]
        if not results:
            return None, "DICOM SEG: not written, there are no lymph-node segments."
        # The volume's own grid (not world): DICOM positions are those of the source images.
        geometry = VolumeGeometry(self._ijkToLocal(volumeNode), slicer.util.arrayFromVolume(volumeNode).shape)
        sources, note = self._dicomSourceDatasets(volumeNode, geometry, dicom_seg_writer)
        clinical = bool(self.serverInfo.get("clinical_use", False))
        try:
            dicom_seg_writer.write_dicom_seg(path, results, None, geometry, sources,
                                             results[0].extra.get("model_id", ""),
                                             results[0].extra.get("weights_sha256", ""),
                                             clinical_use=clinical)
        except ImportError as error:  # highdicom / pydicom not installed in this Python
            return None, (f"DICOM SEG: not written, the Python package {error.name} is missing. "
                          + dependency_installer.DICOM_SEG_NEEDS)
        except (ValueError, InputError) as error:  # e.g. segments that overlap after editing
            return None, f"DICOM SEG: not written ({error}). " + SLICER_DICOM_EXPORT
        return str(path), f"DICOM SEG: {path}{note}"

    @staticmethod
    def _ijkToLocal(volumeNode) -> np.ndarray:
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    @staticmethod
    def _dicomSourceDatasets(volumeNode, geometry, writer):
        """Headers of the DICOM series the CT was loaded from, else None (the writer then makes a
        synthetic series), with a note for the user."""
        synthetic = " (the CT was not loaded from DICOM: the SEG references a synthetic CT series)"
        uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = getattr(slicer, "dicomDatabase", None)
        files = [database.fileForInstance(uid) for uid in uids] if database and uids else []
        if not files or not all(files) or len({str(Path(f).parent) for f in files}) != 1:
            return None, synthetic
        series = database.fileValue(files[0], "0020,000E") or None
        try:
            return writer.read_source_datasets(Path(files[0]).parent, geometry, series), ""
        except (InputError, OSError) as error:
            return None, f"{synthetic[:-1]}; {error})"




#
# LymphNodeMTLTest
#


class LymphNodeMTLTest(ScriptedLoadableModuleTest):
    """The full path on a phantom CT: process, edit, re-classify, add a seed, process again, with
    the local inference server (started on first use)."""

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
