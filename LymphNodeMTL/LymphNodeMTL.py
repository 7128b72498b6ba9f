"""LymphNodeMTL: lymph-node masks and metastasis probabilities from seeds, inside 3D Slicer.

Module (description), Widget (Qt wiring only), Logic (MRML <-> LymphNodeMTLLib only) and Test
(the self-test Slicer's test runner calls). Everything numeric lives in LymphNodeMTLLib; torch and
MONAI are imported only when the engine is first needed, so the module loads without them.
"""

import csv
import importlib.util
import os
import queue
import threading
import traceback
from dataclasses import dataclass, field
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

# Light Lib modules only (numpy); the engine (torch, MONAI) is imported on first use.
from LymphNodeMTLLib.outputs import segmentation_writer as segw
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

# --- dependencies (installed into Slicer's Python on first use) -----------------------------------
# torch comes from the PyTorch extension (right build for the GPU); the rest from PyPI with min and
# max pins, --no-deps so that pip never replaces Slicer's own numpy or SimpleITK.
TORCH_REQUIREMENT = ">=2.1,<3"
PIP_REQUIREMENTS = {  # import name -> pip requirement
    "monai": "monai>=1.4,<1.7",
    "safetensors": "safetensors>=0.4,<1",
    "tqdm": "tqdm>=4.60,<5",
    "scipy": "scipy>=1.10,<2",
}

# Segment tag holding a checksum of the mask the engine wrote: a different mask means edited.
TAG_MASK_HASH = segw.TAG_MASK_HASH
# Table node reference to the segmentation its rows describe.
TABLE_SEGMENTATION_REFERENCE = "lymphNodeSegmentation"
# Results table: column, value type, unit, description.
TABLE_COLUMNS = (
    ("id", "string", "", "Seed id: the label of the seed's control point"),
    ("probability", "double", "", "Metastasis probability (demonstration model, not clinical)"),
    ("label", "string", "", "Predicted class at the model's threshold"),
    ("volume_mm3", "double", "mm3", "Volume of the node mask"),
    ("short_axis_mm", "double", "mm", "RECIST short axis, in the axial plane"),
    ("long_axis_mm", "double", "mm", "RECIST long axis, in the axial plane"),
    ("mean_hu", "double", "HU", "Mean attenuation inside the mask"),
)
_DECIMALS = {"probability": 4, "volume_mm3": 2, "short_axis_mm": 2, "long_axis_mm": 2, "mean_hu": 1}
DEFAULT_LABELS = ("benign", "metastatic")
SEED_MOVED_MM = 0.01  # a seed further than this from the one a segment was made from has moved
# Segment tag with the SHA-256 of the weights that made the segment (DICOM SEG records it).
TAG_WEIGHTS_SHA256 = segw.TAG_WEIGHTS_SHA256
SLICER_DICOM_EXPORT = ("Slicer's own DICOM export also writes DICOM SEG: Data module, right-click the "
                       "segmentation, Export to DICOM (needs the QuantitativeReporting extension).")


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
("LN &lt;id&gt;", coloured green to red by probability) and a table of probability, short and long
axis, volume and mean HU. Edit a segment and press Re-classify to update its probability from your
mask; add seeds and press Apply again to process only the new nodes. Edited segments are never
overwritten unless you ask for it.
<p><b>The bundled model was trained on synthetic phantoms only: it is a demonstration, not a
clinical tool, and must not be used for diagnosis.</b> Use your own model folder for real work.</p>
""")
        self.parent.acknowledgementText = _("""
Built on 3D Slicer, MONAI and PyTorch. Method ideas from multi-task lymph-node segmentation and
classification papers (see the extension's README).
""")
        slicer.app.connect("startupCompleted()", loadLymphNodeTerminology)


def loadLymphNodeTerminology():
    """Offer the module's lymph-node terminology in Slicer's terminology selector."""
    path = os.path.join(os.path.dirname(__file__), "Resources", "LymphNodeMTL.term.json")
    terminologies = getattr(slicer.modules, "terminologies", None)
    if terminologies and os.path.isfile(path):
        terminologies.logic().LoadTerminologyFromFile(path)


#
# Parameter node
#


@parameterNodeWrapper
class LymphNodeMTLParameterNode:
    """The module's inputs and outputs, saved with the scene.

    inputVolume: the CT.  seeds: one control point per node (its label is the node id).
    outputSegmentation / outputTable: created on first Apply when empty.
    modelFolder: a model folder; empty = the bundled demonstration model.
    device: where the network runs.  overwriteEdited: let Apply replace segments you edited.
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
    """Qt wiring only: parameter node <-> GUI, buttons -> Logic, worker job polled by a QTimer."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None  # the running BackgroundJob
        self._applyJobResult = None  # main-thread callback for its result
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
        self._pollTimer.setInterval(100)
        self._pollTimer.connect("timeout()", self._pollJob)

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
            self.ui.applyButton.enabled = not self._job.cancelled
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
            self.ui.statusLabel.text = _("Cancelling...")
            self._updateButtons()
            return
        if not self._ensureDependencies():
            return
        p = self._parameterNode
        settings = qt.QSettings()
        settings.setValue("LymphNodeMTL/device", p.device)
        settings.setValue("LymphNodeMTL/modelFolder", p.modelFolder)
        with slicer.util.tryWithErrorDisplay(_("Cannot start the segmentation."), waitCursor=True):
            plan = self.logic.planPrediction(p.inputVolume, p.seeds, p.outputSegmentation, p.outputTable,
                                             overwriteEdited=p.overwriteEdited)
            modelFolder, device = p.modelFolder or None, p.device
            self._startJob(
                lambda progress: self.logic.predictPlan(plan, modelFolder, device, progress),
                lambda results: self._showPrediction(self.logic.applyPrediction(plan, results)),
                _("Segmenting {count} node(s)...").format(count=len(plan.case.seeds)),
            )

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
        if not self._ensureDependencies():
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Cannot start the re-classification."), waitCursor=True):
            plan = self.logic.planReclassification(p.inputVolume, p.outputSegmentation, p.outputTable)
            modelFolder, device = p.modelFolder or None, p.device
            self._startJob(
                lambda progress: self.logic.classifyPlan(plan, modelFolder, device, progress),
                lambda results: self.logic.applyReclassification(plan, results).message(),
                _("Re-classifying {count} edited node(s)...").format(count=len(plan.results)),
            )

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

    # --- worker job ------------------------------------------------------------------------------
    def _startJob(self, compute, applyResult, statusText: str) -> None:
        """Run compute(progress) on the Logic's worker thread; applyResult(result) later, here."""
        self._job = self.logic.submit(compute)
        self._applyJobResult = applyResult
        self.ui.statusLabel.text = statusText
        self.ui.progressBar.setRange(0, 0)  # busy until the first progress report
        self.ui.progressBar.show()
        self._updateButtons()
        self._pollTimer.start()

    def _pollJob(self) -> None:
        job = self._job
        if job is None:
            self._pollTimer.stop()
            return
        done, total = job.progress
        if total:
            self.ui.progressBar.setRange(0, total)
            self.ui.progressBar.value = done
        if not job.finished:
            return
        self._pollTimer.stop()
        self._job, applyResult, self._applyJobResult = None, self._applyJobResult, None
        self.ui.progressBar.hide()
        self._updateButtons()
        if job.cancelled:
            self.ui.statusLabel.text = _("Cancelled: nothing was changed.")
        elif job.error is not None:
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(_("Lymph Node MTL failed: {error}").format(error=job.error),
                                     detailedText=job.traceback)
        else:
            with slicer.util.tryWithErrorDisplay(_("Cannot show the results."), waitCursor=True):
                self.ui.statusLabel.text = applyResult(job.result)

    # --- dependencies ----------------------------------------------------------------------------
    def _ensureDependencies(self) -> bool:
        """Ask once to install what is missing, then install it; True when everything is there."""
        missing = missingPythonPackages()
        if not missing:
            return True
        listing = "\n".join(f"  - {requirementText(name)}" for name in missing)
        if not slicer.util.confirmOkCancelDisplay(
            _("Lymph Node MTL needs these Python packages, which are not installed yet:\n{listing}\n\n"
              "Install them now? This downloads several hundred MB and can take a few minutes. "
              "Slicer's own numpy and SimpleITK are kept.").format(listing=listing),
            windowTitle=_("Install Python packages"),
        ):
            return False
        try:
            with slicer.util.WaitCursor():
                installPythonPackages(missing)
        except Exception as error:
            slicer.util.errorDisplay(_("Installing Python packages failed: {error}").format(error=error),
                                     detailedText=traceback.format_exc())
            return False
        still = missingPythonPackages()
        if still:
            slicer.util.errorDisplay(_("Still missing after installation: {names}. Restart Slicer and "
                                       "try again.").format(names=", ".join(still)))
        return not still


def requirementText(name: str) -> str:
    if name == "torch":
        return f"torch{TORCH_REQUIREMENT} (through the PyTorch extension)"
    return PIP_REQUIREMENTS[name]


def missingPythonPackages() -> list:
    """Import names of the packages the engine needs that are not installed (nothing is imported)."""
    return [name for name in ("torch", *PIP_REQUIREMENTS) if importlib.util.find_spec(name) is None]


def installPythonPackages(missing) -> None:
    """torch through the PyTorch extension, the rest with pip (pinned, --no-deps)."""
    if "torch" in missing:
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError(
                "the PyTorch extension is not installed: install 'PyTorch' from the Extensions Manager, "
                "restart Slicer, and press Apply again"
            ) from None
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            torch = torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT)
            if torch is None:
                raise RuntimeError("PyTorch was not installed")
    for name in missing:
        if name != "torch":
            slicer.util.pip_install([PIP_REQUIREMENTS[name], "--no-deps"])


#
# Background work
#


class JobCancelled(Exception):
    """Raised inside the worker (from the progress callback) when the user cancels."""


class BackgroundJob:
    """One piece of work for the worker thread; the GUI thread reads its state (no Qt here)."""

    def __init__(self, compute):
        self._compute = compute
        self._cancel = threading.Event()
        self._done = threading.Event()
        self.progress = (0, 0)  # (done, total), written by the worker
        self.result = None
        self.error = None
        self.traceback = ""

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout=None) -> bool:
        return self._done.wait(timeout)

    def run(self) -> None:
        try:
            if not self.cancelled:
                self.result = self._compute(self._reportProgress)
        except JobCancelled:
            pass
        except Exception as error:  # reported to the user by the GUI thread
            self.error = error
            self.traceback = traceback.format_exc()
        finally:
            self._done.set()

    def _reportProgress(self, stage, done, total) -> None:
        if self.cancelled:
            raise JobCancelled()
        self.progress = (int(done), int(total))


class _InferenceWorker(threading.Thread):
    """One persistent thread runs every job, so the engine (and GPU state) stays warm."""

    def __init__(self):
        super().__init__(name="LymphNodeMTL-inference", daemon=True)
        self.jobs = queue.Queue()

    def run(self) -> None:
        while True:
            self.jobs.get().run()


#
# Results of Logic operations
#


@dataclass
class PredictionPlan:
    """What Apply will do, decided on the main thread; `case` holds only the seeds to predict."""

    volumeNode: object
    segmentationNode: object
    tableNode: object
    case: Case
    replaceSegmentIds: dict = field(default_factory=dict)  # node id -> existing segment to overwrite
    keptIds: list = field(default_factory=list)  # existing segments left as they are
    keptEditedIds: list = field(default_factory=list)  # ... of which edited by the radiologist


@dataclass
class ReclassificationPlan:
    volumeNode: object
    segmentationNode: object
    tableNode: object
    case: Case
    results: list  # NodeResults holding the current (edited) masks
    segmentIds: dict  # node id -> segment id
    skippedEmptyIds: list = field(default_factory=list)


@dataclass
class RunSummary:
    segmentationNode: object
    tableNode: object
    updatedIds: list
    keptIds: list = field(default_factory=list)
    keptEditedIds: list = field(default_factory=list)
    skippedEmptyIds: list = field(default_factory=list)
    results: list = field(default_factory=list)
    verb: str = "segmented"

    def message(self) -> str:
        parts = [f"{len(self.updatedIds)} node(s) {self.verb}"]
        if self.keptIds:
            parts.append(f"{len(self.keptIds)} kept as they were")
        if self.keptEditedIds:
            parts.append(f"edited, not overwritten: {', '.join(self.keptEditedIds)}")
        if self.skippedEmptyIds:
            parts.append(f"empty, skipped: {', '.join(self.skippedEmptyIds)}")
        return "; ".join(parts) + "."


#
# LymphNodeMTLLogic
#


class LymphNodeMTLLogic(ScriptedLoadableModuleLogic):
    """MRML <-> LymphNodeMTLLib. Usable without the widget:

        logic = LymphNodeMTLLogic()
        summary = logic.process(ctNode, seedsNode)           # segmentation + table nodes
        logic.reclassify(ctNode, summary.segmentationNode, summary.tableNode)

    The engine (model on its device) stays loaded between calls; it is reloaded only when the model
    folder, its weights or the device change.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._engine = None
        self._engineKey = None
        self._engineLock = threading.Lock()
        self._engineImage = None  # the CT array the engine last ran on (it keeps a device copy)
        self._imageCache = (None, None)  # (volume key, float32 copy): unchanged CT, same array
        self._worker = None

    def getParameterNode(self):
        return LymphNodeMTLParameterNode(super().getParameterNode())

    # --- engine ----------------------------------------------------------------------------------
    def engine(self, modelFolder=None, device="auto"):
        """The resident NodeEngine for this model folder (None: the bundled model) and device."""
        from LymphNodeMTLLib.inference.engine import NodeEngine  # torch + MONAI: first use only
        from LymphNodeMTLLib.network.model_store import WEIGHTS_FILE, default_model_dir

        folder = Path(modelFolder or bundledModelFolder() or default_model_dir()).resolve()
        weights = folder / WEIGHTS_FILE
        stamp = weights.stat().st_mtime_ns if weights.is_file() else None
        key = (str(folder), device or "auto", stamp)
        with self._engineLock:
            if self._engine is None or self._engineKey != key:
                self._engine = None  # release the old model before loading another
                self._engine = NodeEngine(folder, device or "auto")
                self._engineKey = key
            return self._engine

    def _labels(self):
        return tuple(self._engine.config.labels) if self._engine else DEFAULT_LABELS

    def submit(self, compute) -> BackgroundJob:
        """Queue compute(progress) on the persistent worker thread; poll the returned job."""
        if self._worker is None or not self._worker.is_alive():
            self._worker = _InferenceWorker()
            self._worker.start()
        job = BackgroundJob(compute)
        self._worker.jobs.put(job)
        return job

    # --- MRML -> Lib -----------------------------------------------------------------------------
    def caseFromNodes(self, volumeNode, markupsNode=None) -> Case:
        """The CT (a float32 copy the worker may own) with its IJK->world matrix, and the seeds."""
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise InputError("select a CT volume that has image data")
        image = self._imageOf(volumeNode)
        geometry = VolumeGeometry(self._ijkToWorld(volumeNode), image.shape)
        seeds = self.seedsFromMarkups(markupsNode) if markupsNode is not None else []
        return Case(image, geometry, seeds, {"volume": volumeNode.GetName()})

    def _imageOf(self, volumeNode) -> np.ndarray:
        """A float32 copy of the voxels, made again only when the volume changed: repeated runs on
        one CT then hand the engine the same array, whose device copy it keeps."""
        imageData = volumeNode.GetImageData()
        scalars = imageData.GetPointData().GetScalars()
        key = (volumeNode.GetID(), imageData.GetMTime(), scalars.GetMTime() if scalars else 0,
               imageData.GetDimensions())
        if self._imageCache[0] != key:
            self._imageCache = (None, None)  # release the old copy first
            self._imageCache = (key, np.array(slicer.util.arrayFromVolume(volumeNode), dtype=np.float32))
        return self._imageCache[1]

    def _engineFor(self, image, modelFolder, device):
        """The resident engine, told to drop its device copy of the CT when the CT is another one."""
        engine = self.engine(modelFolder, device)
        if self._engineImage is not image and hasattr(engine, "clear_volume_cache"):
            engine.clear_volume_cache()
        self._engineImage = image
        return engine

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
                device="auto", overwriteEdited=False, progress=None) -> RunSummary:
        """Segment and classify every seed that has no segment yet (or whose seed moved); create or
        update ONE segmentation node and ONE table node. Segments the radiologist edited are kept
        unless overwriteEdited. Synchronous: the widget runs the same three steps on its worker."""
        plan = self.planPrediction(volumeNode, markupsNode, segmentationNode, tableNode, overwriteEdited)
        results = self.predictPlan(plan, modelFolder, device, progress)
        return self.applyPrediction(plan, results)

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

    def predictPlan(self, plan: PredictionPlan, modelFolder=None, device="auto", progress=None) -> list:
        """Any thread: run the engine on the plan's seeds (no MRML access)."""
        if not plan.case.seeds:
            return []
        return self._engineFor(plan.case.image, modelFolder, device).predict(plan.case, progress)

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
                   segmentIds=None) -> RunSummary:
        """Re-classify nodes from their current masks; masks are left untouched.

        By default every lymph-node segment whose mask differs from the one the engine wrote (or
        that the engine did not write) is re-classified; unedited segments keep the engine's own
        prediction. Pass segmentIds to re-classify exactly those segments.
        """
        plan = self.planReclassification(volumeNode, segmentationNode, tableNode, segmentIds)
        results = self.classifyPlan(plan, modelFolder, device)
        return self.applyReclassification(plan, results)

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

    def classifyPlan(self, plan: ReclassificationPlan, modelFolder=None, device="auto", progress=None):
        """Any thread: classify under the given masks."""
        if not plan.results:
            return []
        engine = self._engineFor(plan.case.image, modelFolder, device)
        results = engine.classify_masks(plan.case, plan.results)
        if progress:
            progress("nodes", len(results), len(results))
        return results

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
        for key, value in segw.segment_tags(result, result.extra.get("model_id", "")).items():
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
            result.probability = _toFloat(self._tag(segment, segw.TAG_PROBABILITY))
            predicted = self._tag(segment, segw.TAG_PREDICTED_LABEL)
            result.predicted_label = int(predicted) if predicted.isdigit() else 0
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
        """One row per lymph-node segment, in segment order: `updated` results give new values,
        other rows keep theirs (or are rebuilt from the segment's tags when missing)."""
        old = self.tableRows(tableNode)
        segmentation = segmentationNode.GetSegmentation()
        labels = self._labels()
        rows = []
        for nodeId, segmentId in self.lymphNodeSegments(segmentationNode).items():
            if nodeId in updated:
                rows.append(_rowFromResult(updated[nodeId], labels))
            elif nodeId in old:
                rows.append(old[nodeId])
            else:
                rows.append(self._rowFromTags(segmentation.GetSegment(segmentId), labels))
        table = vtk.vtkTable()
        for name, kind, _unit, _description in TABLE_COLUMNS:
            column = vtk.vtkStringArray() if kind == "string" else vtk.vtkDoubleArray()
            column.SetName(name)
            column.SetNumberOfValues(len(rows))
            for index, row in enumerate(rows):
                value = row.get(name)
                if kind == "string":
                    column.SetValue(index, _cellText(value))
                else:
                    column.SetValue(index, float("nan") if value is None else float(value))
            table.AddColumn(column)
        tableNode.SetAndObserveTable(table)
        for name, _kind, unit, description in TABLE_COLUMNS:
            tableNode.SetColumnUnitLabel(name, unit)
            tableNode.SetColumnDescription(name, description)
        tableNode.SetNodeReferenceID(TABLE_SEGMENTATION_REFERENCE, segmentationNode.GetID())
        tableNode.SetLocked(True)  # read-only in the table view: values come from the segments

    @staticmethod
    def tableRows(tableNode) -> dict:
        """Node id -> {column: value} of a results table (text columns str, numeric ones float)."""
        rows = {}
        table = tableNode.GetTable() if tableNode is not None else None
        if table is None:
            return rows
        kinds = {name: kind for name, kind, _u, _d in TABLE_COLUMNS}
        columns = [table.GetColumn(c) for c in range(table.GetNumberOfColumns())]
        for row in range(table.GetNumberOfRows()):
            values = {column.GetName(): _cellValue(column, row, kinds.get(column.GetName(), "string"))
                      for column in columns}
            if values.get("id"):
                rows[values["id"]] = values
        return rows

    def _rowFromTags(self, segment, labels) -> dict:
        tag = lambda key: _toFloat(self._tag(segment, key))  # noqa: E731
        predicted = self._tag(segment, segw.TAG_PREDICTED_LABEL)
        return {
            "id": self._tag(segment, segw.TAG_SEED_ID),
            "probability": tag(segw.TAG_PROBABILITY),
            "label": _labelName(int(predicted), labels) if predicted.isdigit() else "",
            "volume_mm3": tag(segw.TAG_VOLUME),
            "short_axis_mm": tag(segw.TAG_SHORT_AXIS),
            "long_axis_mm": tag(segw.TAG_LONG_AXIS),
            "mean_hu": float("nan"),  # not kept in tags
        }

    @staticmethod
    def _tag(segment, key, default=""):
        value = vtk.reference("")
        return str(value) if segment.GetTag(key, value) else default

    # --- navigation ------------------------------------------------------------------------------
    def jumpToNode(self, tableNode, row: int, segmentationNode=None):
        """Centre the slice views on the node in table row `row` and select its segment."""
        nodeId = tableNode.GetCellText(row, 0)
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

        if tableNode is None:
            tableNode = self._tableOf(segmentationNode)
        if tableNode is not None:
            csvPath = folder / "nodes.csv"
            self._writeTableCsv(tableNode, csvPath)
            report["table"] = str(csvPath)
            report["messages"].append(f"Table: {csvPath}")

        report["dicomSeg"], message = self._exportDicomSeg(segmentationNode, volumeNode, folder / "nodes.dcm")
        report["messages"].append(message)
        return report

    def _writeTableCsv(self, tableNode, path) -> None:
        """The table as CSV, numbers rounded as shown, unknown values (NaN) as empty cells."""
        table = tableNode.GetTable()
        names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
        rows = self.tableRows(tableNode)
        with segw.atomic_output(path) as temporary:
            with open(temporary, "w", newline="", encoding="utf-8") as stream:
                writer = csv.writer(stream, lineterminator="\n")
                writer.writerow(names)
                for values in rows.values():
                    writer.writerow([_csvText(values.get(name), _DECIMALS.get(name)) for name in names])

    def _exportDicomSeg(self, segmentationNode, volumeNode, path):
        """DICOM SEG through the Lib's writer; (path or None, a line for the user)."""
        try:
            from LymphNodeMTLLib.outputs import dicom_seg_writer
        except ImportError:
            return None, "DICOM SEG: not written, there is no DICOM SEG writer. " + SLICER_DICOM_EXPORT
        results = self.resultsFromSegments(volumeNode, segmentationNode)
        if not results:
            return None, "DICOM SEG: not written, there are no lymph-node segments."
        # The volume's own grid (not world): DICOM positions are those of the source images.
        geometry = VolumeGeometry(self._ijkToLocal(volumeNode), slicer.util.arrayFromVolume(volumeNode).shape)
        sources, note = self._dicomSourceDatasets(volumeNode, geometry, dicom_seg_writer)
        clinical = bool(self._engine and self._engine.config.clinical_use)
        try:
            dicom_seg_writer.write_dicom_seg(path, results, None, geometry, sources,
                                             results[0].extra.get("model_id", ""),
                                             results[0].extra.get("weights_sha256", ""),
                                             clinical_use=clinical)
        except ImportError as error:  # highdicom / pydicom not installed in this Python
            return None, (f"DICOM SEG: not written, the Python package {error.name} is missing "
                          f"(pip_install('highdicom') adds it). " + SLICER_DICOM_EXPORT)
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
# Helpers (pure functions)
#


def bundledModelFolder() -> Optional[str]:
    """The demonstration model installed next to the module (extension package), if any; None in a
    source checkout or when LYMPHNODE_MTL_MODEL overrides it (the Lib's default then applies)."""
    if os.environ.get("LYMPHNODE_MTL_MODEL"):
        return None
    installed = Path(__file__).resolve().parent / "Resources" / "Models" / "phantom-demo"
    return str(installed) if installed.is_dir() else None


def _rowFromResult(result: NodeResult, labels) -> dict:
    row = {"id": result.node_id, "label": _labelName(result.predicted_label, labels)}
    for name, value in (("probability", result.probability), ("volume_mm3", result.volume_mm3),
                        ("short_axis_mm", result.short_axis_mm), ("long_axis_mm", result.long_axis_mm),
                        ("mean_hu", result.mean_hu)):
        row[name] = round(float(value), _DECIMALS[name]) if np.isfinite(value) else float("nan")
    return row


def _labelName(predicted: int, labels) -> str:
    return labels[predicted] if 0 <= predicted < len(labels) else str(predicted)


def _cellText(value) -> str:
    """Table text without double quotes (they do not survive Slicer's CSV/TSV round trip)."""
    return "" if value is None else str(value).replace('"', "'")


def _cellValue(column, row: int, kind: str):
    """One table cell: numeric columns as float (NaN when empty), text columns as str."""
    if column.IsA("vtkDataArray"):
        value = float(column.GetTuple1(row))
        return value if kind != "string" else str(value)
    text = str(column.GetValue(row))
    return text if kind == "string" else _toFloat(text)


def _csvText(value, decimals) -> str:
    if isinstance(value, float):
        if not np.isfinite(value):
            return ""
        return f"{value:.{decimals}f}" if decimals is not None else repr(value)
    return _cellText(value)


def _toFloat(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


#
# LymphNodeMTLTest
#


class LymphNodeMTLTest(ScriptedLoadableModuleTest):
    """The full path on a phantom CT: process, edit, re-classify, add a seed, process again."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        missing = missingPythonPackages()
        if missing:
            raise RuntimeError(f"missing Python packages {', '.join(missing)}: open the module and press "
                               "Apply once to install them, then run the test again")
        self.setUp()
        self.test_PhantomEndToEnd()

    def test_PhantomEndToEnd(self):
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
