"""Thin stand-ins for the parts of the Slicer application that slicer-core lacks, so that the REAL
module file (LymphNodeMTL/LymphNodeMTL.py) imports under pytest.

slicer-core gives `import slicer` with real MRML, logics and `slicer.util`, but not the scripted-module
base classes, the parameter node wrapper, `slicer.i18n`, or the Qt/CTK Python bindings. `install()`
adds only what is missing (inside the real Slicer application it changes nothing). The stand-ins do
no GUI work: the Widget class can be defined but not shown (a test may drive its methods with
stand-in widgets, QSettings and a QTimer it fires itself); Logic and Test classes run for real.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import sys
import types
import unittest
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO_ROOT / "LymphNodeMTL"
MODULE_FILE = MODULE_DIR / "LymphNodeMTL.py"


# --- slicer.ScriptedLoadableModule --------------------------------------------------------------
class ScriptedLoadableModule:
    def __init__(self, parent=None):
        self.parent = parent if parent is not None else types.SimpleNamespace()
        self.moduleName = self.__class__.__name__

    def resourcePath(self, filename):
        return str(MODULE_DIR / "Resources" / filename)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent
        self.moduleName = self.__class__.__name__[: -len("Widget")]

    def resourcePath(self, filename):
        return str(MODULE_DIR / "Resources" / filename)

    def setup(self):
        raise RuntimeError("the module widget needs the Slicer application (Qt); not available here")


class ScriptedLoadableModuleLogic:
    """As Slicer's: module name from the class name, one singleton parameter node per scene."""

    def __init__(self, parent=None):
        name = self.__class__.__name__
        self.moduleName = name[: -len("Logic")] if name.endswith("Logic") else name
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        import slicer

        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(self.moduleName)
            node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
            node.SetModuleName(self.moduleName)
            node = slicer.mrmlScene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    """Slicer's test base is a unittest.TestCase whose delayDisplay shows a message; here it logs."""

    def delayDisplay(self, message, msec=1000):
        logging.info(message)


# --- slicer.parameterNodeWrapper -----------------------------------------------------------------
@dataclasses.dataclass
class Choice:
    choices: tuple


@dataclasses.dataclass
class WithinRange:
    minimum: float
    maximum: float


@dataclasses.dataclass
class Default:
    value: object


def parameterNodeWrapper(cls):
    """Typed attributes kept in Python (not serialised into the MRML node, unlike Slicer's)."""
    defaults = {name: getattr(cls, name, None) for name in getattr(cls, "__annotations__", {})}

    def __init__(self, parameterNode=None):
        self.parameterNode = parameterNode
        for name, value in defaults.items():
            setattr(self, name, value)

    def connectGui(self, gui):
        raise RuntimeError("connectGui needs the Slicer application (Qt)")

    cls.__init__ = __init__
    cls.connectGui = connectGui
    cls.disconnectGui = lambda self, tag: None
    return cls


# --- slicer.i18n ----------------------------------------------------------------------------------
def tr(text):
    return text


def translate(context, text):
    return text


# --- qt / ctk ---------------------------------------------------------------------------------
class _Anything:
    """Stands for any Qt/CTK class or enum value a module may name; it does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()

    def __call__(self, *args, **kwargs):
        return _Anything()


class QSettings:
    """In-memory QSettings: one store per process, as the application's settings file would be."""

    store: dict = {}

    def value(self, key, default=None):
        return self.store.get(key, default)

    def setValue(self, key, value):
        self.store[key] = value

    def remove(self, key):
        self.store.pop(key, None)


class QTimer:
    """A timer that fires only when a test calls `fire()` (the test plays the event loop)."""

    def __init__(self, *args):
        self.active, self.interval, self._callbacks = False, 0, []

    def setInterval(self, milliseconds):
        self.interval = int(milliseconds)

    def connect(self, signal, callback):
        assert signal == "timeout()", signal
        self._callbacks.append(callback)

    def start(self, *args):
        self.active = True

    def stop(self):
        self.active = False

    def isActive(self):
        return self.active

    def fire(self):
        if self.active:
            for callback in list(self._callbacks):
                callback()


# Qt classes with a working stand-in; every other name is a do-nothing placeholder.
_QT_STAND_INS = {"QSettings": QSettings, "QTimer": QTimer}


def _fake_qt_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    def class_named(attr):  # any class name resolves to the placeholder; dunders stay missing
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _QT_STAND_INS.get(attr, _Anything) if name == "qt" else _Anything

    module.__getattr__ = class_named
    module.__file__ = __file__
    return module


def _submodule(slicer, name: str, **attributes) -> None:
    full = f"slicer.{name}"
    module = types.ModuleType(full)
    for key, value in attributes.items():
        setattr(module, key, value)
    module.__all__ = list(attributes)
    sys.modules[full] = module
    setattr(slicer, name, module)


def install() -> None:
    """Add the stand-ins that are missing; idempotent, and a no-op inside Slicer."""
    import slicer

    for name in ("qt", "ctk"):
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules[name] = _fake_qt_module(name)
    if "slicer.ScriptedLoadableModule" not in sys.modules and not hasattr(
        slicer, "ScriptedLoadableModule"
    ):
        _submodule(
            slicer,
            "ScriptedLoadableModule",
            ScriptedLoadableModule=ScriptedLoadableModule,
            ScriptedLoadableModuleWidget=ScriptedLoadableModuleWidget,
            ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic,
            ScriptedLoadableModuleTest=ScriptedLoadableModuleTest,
        )
    if "slicer.parameterNodeWrapper" not in sys.modules and not hasattr(
        slicer, "parameterNodeWrapper"
    ):
        _submodule(slicer, "parameterNodeWrapper", parameterNodeWrapper=parameterNodeWrapper,
                   Choice=Choice, WithinRange=WithinRange, Default=Default)
    if "slicer.i18n" not in sys.modules and not hasattr(slicer, "i18n"):
        _submodule(slicer, "i18n", tr=tr, translate=translate)


def import_module_file():
    """Import the real LymphNodeMTL.py (once per process) as Slicer does: by file, as `LymphNodeMTL`."""
    install()
    if "LymphNodeMTL" in sys.modules:
        return sys.modules["LymphNodeMTL"]
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))  # Slicer puts the module's folder on sys.path
    spec = importlib.util.spec_from_file_location("LymphNodeMTL", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["LymphNodeMTL"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["LymphNodeMTL"]
        raise
    return module


def warm_logic(module):
    """A Logic of the imported module file whose local server (bundled model, CPU) is started and
    ready: one per test file, warm for all its tests."""
    logic = module.LymphNodeMTLLogic()
    server = logic.localServer()
    server.ensure("cpu", None)
    assert server.waitUntilReady() == "ready", server.error
    return logic
