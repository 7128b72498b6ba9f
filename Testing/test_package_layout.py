"""The engine's layout (docs/architecture.md): stage packages and nothing else in the package root,
no import cycle between its modules, imports only down the stage order, never slicer/qt/ctk/vtk, and
no torch behind `import LymphNodeMTLLib`, core/ or io/.

The import graph is read from the source (every `import` and `from ... import`, relative or
absolute, at module level or inside a function), so it needs no import and sees lazy imports too.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "LymphNodeMTL" / "LymphNodeMTLLib"
PACKAGE = "LymphNodeMTLLib"

# docs/architecture.md: a package imports only from itself and from lower ranks
STAGE_RANK = {
    "core": 0,
    "io": 1,
    "preprocessing": 2, "phantoms": 2,
    "network": 3,
    "inference": 4, "training": 4,
    "evaluation": 5, "outputs": 5,
    "server": 6,
    "commands": 7,
}
GUI_MODULES = {"slicer", "qt", "ctk", "vtk"}
TORCH_FREE_PACKAGES = ("core", "io")



def _module_name(path: Path) -> str:
    parts = list(path.relative_to(LIB.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(LIB.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str, module_level_only: bool = False):
    """(target, line) of every import in module `name`: Lib modules by dotted name, others by their
    top-level name. `from pkg import sub` names the submodule when `sub` is one."""
    tree = ast.parse(MODULES[name].read_text(), str(MODULES[name]))
    package = name if _is_package(name) else name.rpartition(".")[0]
    nodes = tree.body if module_level_only else ast.walk(tree)
    # imports under `if TYPE_CHECKING:` exist only for annotations: they never run
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                   for n in ast.walk(block)}
    for node in nodes:
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if sub in MODULES else target), node.lineno


def _lib_graph(module_level_only: bool = False) -> dict[str, set[str]]:
    graph = {}
    for name in MODULES:
        graph[name] = {t for t, _ in _imports(name, module_level_only)
                       if t.split(".")[0] == PACKAGE and t != name}
        unknown = graph[name] - set(MODULES)
        assert not unknown, f"{name} imports Lib modules that do not exist: {sorted(unknown)}"
    return graph


def _stage(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _upward_imports() -> set[tuple[str, str]]:
    bad = set()
    for source, targets in _lib_graph().items():
        for target in targets:
            a, b = _stage(source), _stage(target)
            if a == "":  # the package root is the documented API above every stage
                continue
            if b == "" or (a != b and STAGE_RANK[b] >= STAGE_RANK[a]):  # nothing imports the root
                bad.add((source, target))
    return bad


def _torch_at_import() -> set[str]:
    """Modules of `import LymphNodeMTLLib`, core/ and io/ that reach torch through module-level imports."""
    graph = _lib_graph(module_level_only=True)
    direct = {name for name in MODULES
              if any(t.split(".")[0] == "torch" for t, _ in _imports(name, module_level_only=True))}
    reaching = set(direct)
    changed = True
    while changed:
        changed = False
        for name, targets in graph.items():
            if name not in reaching and targets & reaching:
                reaching.add(name)
                changed = True
    checked = {name for name in MODULES if name == PACKAGE or _stage(name) in TORCH_FREE_PACKAGES}
    return reaching & checked


def test_package_root_holds_only_init():
    modules = sorted(p.name for p in LIB.glob("*.py"))
    assert modules == ["__init__.py"], f"modules in the package root (move them into a stage package): {modules}"
    stages = sorted(p.name for p in LIB.iterdir() if (p / "__init__.py").is_file())
    unranked = set(stages) - set(STAGE_RANK)
    assert not unranked, f"stage packages without a rank in docs/architecture.md: {sorted(unranked)}"


def test_graph_reader_sees_relative_function_level_and_from_package_imports():
    # the reader itself, on imports known to be in the code: a relative import at module level,
    # one inside a function (matplotlib stays lazy) and `from . import submodule`
    graph = _lib_graph()
    assert "LymphNodeMTLLib.core.geometry" in graph["LymphNodeMTLLib.core.case"]
    assert "LymphNodeMTLLib.evaluation.report" in graph["LymphNodeMTLLib.evaluation.evaluator"]
    assert "LymphNodeMTLLib.evaluation.report" not in _lib_graph(True)["LymphNodeMTLLib.evaluation.evaluator"]
    assert "LymphNodeMTLLib.training.distributed" in graph["LymphNodeMTLLib.training.trainer"]


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_lib_modules():
    cycles = _cycles(_lib_graph())
    assert not cycles, "modules that import each other (let data flow one way): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_imports_go_down_the_stage_order_only():
    unexpected = _upward_imports()
    assert not unexpected, "imports against the stage order of docs/architecture.md: " + ", ".join(
        f"{a} -> {b}" for a, b in sorted(unexpected))


def test_root_package_stays_light():
    # at import only the version; the entry point (predict_to_folder) loads on first use
    assert _lib_graph(module_level_only=True)[PACKAGE] == {f"{PACKAGE}.core.version"}


def test_lib_never_imports_slicer_qt_ctk_or_vtk():
    found = [f"{name}:{line} imports {target}" for name in MODULES for target, line in _imports(name)
             if target.split(".")[0].lower() in GUI_MODULES or target.split(".")[0].startswith("vtk")]
    assert not found, "the engine must run without Slicer: " + "; ".join(found)


def test_torch_is_not_imported_by_the_package_core_or_io():
    unexpected = _torch_at_import()
    assert not unexpected, f"these modules import torch when imported (import it where it is used): {sorted(unexpected)}"


def test_torch_free_modules_really_load_without_torch():
    """The static reading checked by an import: the package and every torch-free core/io module
    in a fresh interpreter, then torch must still be absent."""
    names = sorted(n for n in MODULES if n == PACKAGE or _stage(n) in TORCH_FREE_PACKAGES)
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            "loaded = sorted(m for m in ('torch', 'monai') if m in sys.modules)\n"
            "print(','.join(loaded))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(LIB.parent)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing {names} loaded {out.stdout.strip()}"



def _network_attributes() -> set[str]:
    """Names the network's modules keep on themselves (`self.name = ...` in network/ classes)."""
    names = set()
    for name, path in MODULES.items():
        if _stage(name) != "network":
            continue
        for cls in ast.walk(ast.parse(path.read_text())):
            if isinstance(cls, ast.ClassDef):
                for node in ast.walk(cls):
                    targets = node.targets if isinstance(node, ast.Assign) else \
                        [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
                    names |= {t.attr for t in targets if isinstance(t, ast.Attribute)
                              and isinstance(t.value, ast.Name) and t.value.id == "self"}
    return {n for n in names if not n.startswith("__")}


def _attribute_writes_from_outside(attributes: set[str]) -> list[str]:
    """`x.name = ...` (x not self) and setattr(x, "name", ...) anywhere in the Lib, for those names."""
    found = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            for t in targets:
                if (isinstance(t, ast.Attribute) and t.attr in attributes
                        and not (isinstance(t.value, ast.Name) and t.value.id in ("self", "cls"))):
                    found.append(f"{name}:{node.lineno} sets .{t.attr}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr"
                    and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
                    and node.args[1].value in attributes):
                found.append(f"{name}:{node.lineno} calls setattr")
    return found


def test_nothing_changes_the_networks_computation_by_setting_its_attributes():
    """What varies per batch (the patch spacing, the source slice thickness) is an argument of the
    network's forward, never an attribute someone sets on its modules for a while."""
    attributes = _network_attributes()
    assert {"pooling", "hu_window", "sigma_mm"} <= attributes  # the reader sees the head's own
    found = _attribute_writes_from_outside(attributes)
    assert not found, "set these through forward() arguments instead: " + "; ".join(found)


# --- the node-result contract: one definition of each status predicate and of the segment tags ----
MODULE_DIR = LIB.parent
PRODUCT_FILES = sorted([*LIB.rglob("*.py"), *(MODULE_DIR / "LymphNodeMTLSlicerLib").rglob("*.py"),
                        MODULE_DIR / "LymphNodeMTL.py"])
STATUS_MODULE = LIB / "core" / "node_status.py"
TAGS_MODULE = LIB / "core" / "segment_tags.py"


def _normalised(name: str) -> str:
    return name.replace("_", "").lower()


def _definitions(names: set[str]) -> dict[str, list[str]]:
    """Normalised function name -> 'file:line' of every product function so named (any spelling)."""
    found = {}
    for path in PRODUCT_FILES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _normalised(node.name) in names:
                found.setdefault(_normalised(node.name), []).append(
                    f"{path.relative_to(MODULE_DIR)}:{node.lineno}")
    return found


def _public_functions(path: Path) -> set[str]:
    return {_normalised(n.name) for n in ast.parse(path.read_text()).body
            if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}


def test_each_status_predicate_is_defined_once_in_core():
    predicates = _public_functions(STATUS_MODULE)
    assert {"hasusablemask", "needsreview"} <= predicates
    # the names the predicates went by before they moved to core
    found = _definitions(predicates | {"reviewfirst", "isusable"})
    home = f"{STATUS_MODULE.relative_to(MODULE_DIR)}:"
    elsewhere = {name: places for name, places in found.items()
                 if len(places) != 1 or not places[0].startswith(home)}
    assert not elsewhere, f"status predicates defined outside core/node_status.py: {elsewhere}"


def test_no_module_decides_what_a_status_means_by_comparing_it():
    """`status == OK`, `status in HAS_USABLE_MASK`, `status != "ok"`: the predicates' job."""
    meaning = {"OK", "HAS_USABLE_MASK"}
    found = []
    for path in PRODUCT_FILES:
        if path == STATUS_MODULE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Compare):
                continue
            for operand in [node.left, *node.comparators]:
                named = getattr(operand, "attr", None) or getattr(operand, "id", None)
                if named in meaning or (isinstance(operand, ast.Constant) and operand.value == "ok"):
                    found.append(f"{path.relative_to(MODULE_DIR)}:{node.lineno}")
    assert not found, f"use core/node_status.py's predicates instead: {found}"


def test_segment_tags_are_written_and_read_in_one_module():
    """Only core/segment_tags.py names a tag key (as a constant or as its text); elsewhere the
    Slicer module and the writers go through segment_tags() and read_segment_tags()."""
    sys.path.insert(0, str(MODULE_DIR))
    try:
        from LymphNodeMTLLib.core import segment_tags
    finally:
        sys.path.remove(str(MODULE_DIR))
    constants = {name: value for name, value in vars(segment_tags).items()
                 if (name.startswith("TAG_") and name != "TAG_PREFIX") or name == "TERMINOLOGY_TAG"}
    assert len(constants) > 10
    keys = set(constants.values())
    found = []
    for path in PRODUCT_FILES:
        if path == TAGS_MODULE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            named = getattr(node, "attr", None) if isinstance(node, ast.Attribute) else \
                getattr(node, "id", None) if isinstance(node, ast.Name) else None
            literal = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None
            alias = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
            if named in constants or literal in keys or set(alias) & set(constants):
                found.append(f"{path.relative_to(MODULE_DIR)}:{node.lineno}")
    assert not found, f"segment tag keys named outside core/segment_tags.py: {sorted(set(found))}"
    readers = _definitions({"readsegmenttags", "segmenttags", "parsetags", "serializetags"})
    twice = {name: places for name, places in readers.items() if len(places) != 1}
    assert not twice and set(readers) == {"readsegmenttags", "segmenttags", "parsetags", "serializetags"}, twice


def test_the_slicer_module_file_is_module_widget_logic_and_test():
    """What is not MRML <-> engine conversion or Qt wiring lives in LymphNodeMTLSlicerLib."""
    path = MODULE_DIR / "LymphNodeMTL.py"
    text = path.read_text()
    assert len(text.splitlines()) <= 800, f"{path.name} has {len(text.splitlines())} lines; move helpers out"
    classes = [n.name for n in ast.parse(text).body if isinstance(n, ast.ClassDef)]
    assert classes == ["LymphNodeMTL", "LymphNodeMTLParameterNode", "LymphNodeMTLWidget", "LymphNodeMTLLogic",
                       "LymphNodeMTLTest"]
