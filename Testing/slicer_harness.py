"""Real Slicer MRML in plain Python (the slicer-core wheel), set up the way the Slicer app would.

slicer-core gives `import slicer` with the C++ MRML classes and module logics but none of what the
application normally wires together at start-up. `SlicerHarness` does that wiring (see
docs/slicer-notes.md): segmentation converter rules, application logic with default colour
nodes, the module logics, `slicer.mrmlScene` and a `slicer.modules` stand-in, so that
`slicer.util` helpers and Logic code run unchanged. Use it as a context manager, or through the
`mrml_scene` pytest fixture (skipped where slicer-core is not installed).
"""

from __future__ import annotations

import types

import numpy as np
import pytest

# Module-logic classes by the names Slicer's `slicer.modules.<name>.logic()` uses.
_MODULE_LOGICS = {
    "volumes": "vtkSlicerVolumesLogic",
    "segmentations": "vtkSlicerSegmentationsModuleLogic",
    "markups": "vtkSlicerMarkupsLogic",
    "tables": "vtkSlicerTablesLogic",
    "subjecthierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
}
# The app registers logics under the module's title-case name; Logic code may look them up so.
_APP_LOGIC_NAMES = {
    "volumes": "Volumes",
    "segmentations": "Segmentations",
    "markups": "Markups",
    "tables": "Tables",
    "subjecthierarchy": "SubjectHierarchy",
}
_CONVERTER_RULES = (
    "vtkBinaryLabelmapToClosedSurfaceConversionRule",
    "vtkClosedSurfaceToBinaryLabelmapConversionRule",
    "vtkClosedSurfaceToFractionalLabelmapConversionRule",
    "vtkFractionalLabelmapToClosedSurfaceConversionRule",
)
_ABSENT = object()  # marks a `slicer` attribute that did not exist before the harness


def import_slicer_or_skip():
    """Import slicer-core's `slicer`, or skip the calling test where it is not installed."""
    slicer = pytest.importorskip("slicer", exc_type=ImportError)  # absent or broken install
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("`slicer` is importable but is not slicer-core (no vtkMRMLScene)")
    return slicer


def ensure_converter_rules(slicer) -> None:
    """Leave exactly one of each segmentation conversion rule registered in this process.

    Slicer registers them at start-up; here vtkSlicerSegmentationsModuleLogic registers all four
    again on every SetMRMLScene, so a fresh harness per test would pile up duplicates. Keep the
    first of each class, drop repeats, and add any that are missing.
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    registered = set()
    for rule in factory.GetConverterRules():
        if rule.GetClassName() in registered:
            factory.UnregisterConverterRule(rule)
        else:
            registered.add(rule.GetClassName())
    for rule_class in _CONVERTER_RULES:
        if rule_class not in registered:
            # The factory keeps its own reference to the rule; no Python reference is needed.
            factory.RegisterConverterRule(getattr(slicer, rule_class)())


class _ModuleStandIn:
    """What `slicer.modules.<name>` offers that Logic code uses: `.logic()`."""

    def __init__(self, logic):
        self._logic = logic

    def logic(self):
        return self._logic


class SlicerHarness:
    """A fresh MRML scene with the application and module logics wired as in Slicer.

    Attributes (valid between __enter__ and __exit__):
        scene: the vtkMRMLScene, also set as `slicer.mrmlScene`.
        app_logic: the vtkSlicerApplicationLogic.
        logics: module logics by `slicer.modules` name ("volumes", "segmentations", ...).
    """

    def __init__(self):
        self.slicer = None
        self.scene = None
        self.app_logic = None
        self.color_logic = None
        self.logics: dict = {}
        self._saved_globals: dict = {}

    def __enter__(self) -> "SlicerHarness":
        slicer = self.slicer = import_slicer_or_skip()
        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        self.color_logic = slicer.vtkSlicerColorLogic()
        self.color_logic.SetMRMLApplicationLogic(self.app_logic)
        self.color_logic.SetMRMLScene(self.scene)  # adds the default colour nodes
        self.app_logic.SetColorLogic(self.color_logic)
        # Volumes logic finds colour tables through the "Colors" module logic.
        self.app_logic.SetModuleLogic("Colors", self.color_logic)
        for name, class_name in _MODULE_LOGICS.items():
            logic = getattr(slicer, class_name)()
            logic.SetMRMLApplicationLogic(self.app_logic)
            logic.SetMRMLScene(self.scene)
            self.app_logic.SetModuleLogic(_APP_LOGIC_NAMES[name], logic)
            # Holding the logic here keeps it alive: dropping it segfaults later scene calls.
            self.logics[name] = logic
        ensure_converter_rules(slicer)
        self._install_globals(slicer)
        return self

    def __exit__(self, *exc_info) -> None:
        self.scene.Clear(True)
        self._restore_globals()
        # Drop logics only after the scene is cleared, in reverse order of creation.
        for name in reversed(list(self.logics)):
            del self.logics[name]
        self.color_logic = None
        self.app_logic = None
        self.scene = None

    def _install_globals(self, slicer) -> None:
        """Set `slicer.mrmlScene` and `slicer.modules`, remembering what was there before."""
        for attr in ("mrmlScene", "modules"):
            self._saved_globals[attr] = getattr(slicer, attr, _ABSENT)
        modules = types.SimpleNamespace(
            **{name: _ModuleStandIn(logic) for name, logic in self.logics.items()}
        )
        slicer.mrmlScene = self.scene
        slicer.modules = modules

    def _restore_globals(self) -> None:
        for attr, value in self._saved_globals.items():
            if value is _ABSENT:
                delattr(self.slicer, attr)
            else:
                setattr(self.slicer, attr, value)
        self._saved_globals.clear()


@pytest.fixture
def mrml_scene():
    """A fresh, fully wired MRML scene (`slicer.mrmlScene`); skipped without slicer-core."""
    with SlicerHarness() as harness:
        yield harness.scene


# --- reading segmentation files as Slicer does (for tests) ---------------------------------------
def load_segmentation_node(path):
    import slicer

    node = slicer.modules.segmentations.logic().LoadSegmentationFromFile(str(path), False)
    assert node is not None, "Slicer could not read the file"
    return node


def segments_of(segmentation_node):
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegment(i) for i in range(segmentation.GetNumberOfSegments())]


def segment_tag(segment, key) -> str:
    import vtk

    value = vtk.reference("")
    assert segment.GetTag(key, value), f"segment {segment.GetName()} lacks tag {key}"
    return str(value)


def reference_volume(geometry):
    import slicer

    return slicer.util.addVolumeFromArray(np.zeros(geometry.shape_kji, np.int16),
                                          geometry.ijk_to_ras, name="CT")


# --- saving and reloading scenes without the application (for tests) -----------------------------
# Data nodes written with a scene (built-in colour tables and the like are not).
_SAVED_NODE_CLASSES = ("vtkMRMLVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLTableNode",
                       "vtkMRMLMarkupsNode", "vtkMRMLModelNode")


def write_scene_mrml(scene, mrml_path) -> None:
    """Write the data nodes (volumes, segmentations, tables, markups, models) next to `mrml_path`,
    each in its default format, then the .mrml itself.

    slicer.util.saveScene needs slicer.app; this is what it does for a plain .mrml scene.
    """
    from pathlib import Path

    folder = Path(mrml_path).parent
    folder.mkdir(parents=True, exist_ok=True)
    nodes = [scene.GetNthNodeByClass(index, class_name)
             for class_name in _SAVED_NODE_CLASSES
             for index in range(scene.GetNumberOfNodesByClass(class_name))]
    for node in nodes:
        if node.GetStorageNode() is None:
            assert node.AddDefaultStorageNode(), f"no storage node for {node.GetName()}"
        storage = node.GetStorageNode()
        name = f"{node.GetID()}.{storage.GetDefaultWriteFileExtension()}"
        storage.SetFileName(str(folder / name))
        assert storage.WriteData(node), f"could not write {node.GetName()}"
    scene.SetURL(str(mrml_path))
    assert scene.Commit(), f"could not write {mrml_path}"


def read_scene_mrml(scene, mrml_path) -> None:
    """Load a .mrml scene (and its data files) into `scene`, replacing what is there."""
    scene.Clear(False)
    scene.SetURL(str(mrml_path))
    assert scene.Connect(), f"could not read {mrml_path}"


def enable_mrb_reading(scene, cache_dir):
    """Give `scene` the cache and data-I/O managers that .mrb reading needs; keep the returned
    pair referenced for as long as the scene reads files."""
    from pathlib import Path

    import slicer

    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    cache = slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(str(cache_dir))
    data_io = slicer.vtkDataIOManager()
    data_io.SetCacheManager(cache)
    scene.SetCacheManager(cache)
    scene.SetDataIOManager(data_io)
    return cache, data_io
