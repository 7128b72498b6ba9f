"""The extension's non-Python files agree with the code: the .ui has every widget the module file
uses and binds every parameter, the CMake lists name exactly the files that exist, the one icon is
a 128x128 PNG, the terminology file is valid and is the one the segments point to, the extension
descriptions agree and carry literal URLs of files in the repository, and the root has a LICENSE."""

import ast
import json
import re
import typing
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "LymphNodeMTL"
MODULE_FILE = MODULE_DIR / "LymphNodeMTL.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "LymphNodeMTL.ui"
TERM_FILE = MODULE_DIR / "Resources" / "LymphNodeMTL.term.json"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
EXTENSION_CMAKE = ROOT / "CMakeLists.txt"
SLICER_LIB = MODULE_DIR / "LymphNodeMTLSlicerLib"
# Qt's own widget classes need no <customwidget> declaration in the .ui.
QT_CLASSES = {"QWidget", "QLabel", "QPushButton", "QToolButton", "QLineEdit", "QComboBox",
              "QCheckBox", "QProgressBar", "QTableView"}
# The widget class the parameter node wrapper binds to each parameter type.
BOUND_WIDGET = {"node": "qMRMLNodeComboBox", str: "QLineEdit", "choice": "QComboBox", bool: "QCheckBox"}
MRML_WIDGETS = {"qMRMLNodeComboBox", "qMRMLTableView", "qSlicerMarkupsPlaceWidget"}


# --- .ui --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ui():
    return ET.parse(UI_FILE).getroot()


def _widgets(ui):
    return {w.get("name"): w.get("class") for w in ui.iter("widget")}


def _parameter_bindings(ui):
    bindings = {}
    for widget in ui.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bindings[prop.find("string").text] = widget.get("class")
    return bindings


def test_every_widget_the_module_uses_is_in_the_ui(ui):
    used = set(re.findall(r"self\.ui\.([A-Za-z_]\w*)", MODULE_FILE.read_text()))
    assert used, "the module file uses no widget from the .ui?"
    missing = used - set(_widgets(ui))
    assert not missing, f"the module uses widgets the .ui lacks: {sorted(missing)}"


def test_every_widget_the_refine_section_uses_is_in_the_ui(ui):
    """The Refine section's wiring (LymphNodeMTLSlicerLib/refine_controls.py) names its own widgets."""
    used = set(re.findall(r"\bui\.([A-Za-z_]\w*)", (SLICER_LIB / "refine_controls.py").read_text()))
    assert {"positivePointButton", "negativePointButton", "longAxisButton", "undoButton", "refineNodeLabel"} <= used
    missing = used - set(_widgets(ui))
    assert not missing, f"the Refine section uses widgets the .ui lacks: {sorted(missing)}"
    refine = next(w for w in ui.iter("widget") if w.get("name") == "refineCollapsibleButton")
    inside = {w.get("name") for w in refine.iter("widget")}
    assert used - {"statusLabel", "resultsTableView"} <= inside


def test_every_widget_the_follow_up_section_uses_is_in_the_ui_inside_its_section(ui):
    """The Follow-up section's wiring (LymphNodeMTLSlicerLib/follow_up_controls.py) names its own widgets."""
    used = set(re.findall(r"\bui\.([A-Za-z_]\w*)", (SLICER_LIB / "follow_up_controls.py").read_text()))
    assert {"followUpApplyButton", "followUpRemeasureButton", "followUpTableView", "followUpResponseLabel"} <= used
    widgets = _widgets(ui)
    assert not used - set(widgets), f"the Follow-up section uses widgets the .ui lacks: {sorted(used - set(widgets))}"
    section = next(w for w in ui.iter("widget") if w.get("name") == "followUpCollapsibleButton")
    assert used - {"statusLabel"} <= {w.get("name") for w in section.iter("widget")}
    assert {widgets[name] for name in used if name.endswith("Selector")} == {"qMRMLNodeComboBox"}


def test_ui_binds_every_parameter_to_a_widget_of_the_right_kind(ui):
    import slicer_module_stubs

    module = slicer_module_stubs.import_module_file()
    hints = typing.get_type_hints(module.LymphNodeMTLParameterNode, include_extras=True)
    bindings = _parameter_bindings(ui)
    assert set(bindings) == set(hints)
    for name, hint in hints.items():
        if typing.get_origin(hint) is typing.Annotated:
            kind = "choice"
        elif isinstance(hint, type) and hint.__name__.startswith("vtkMRML"):
            kind = "node"
        else:
            kind = hint
        assert bindings[name] == BOUND_WIDGET[kind], name


def test_ui_declares_custom_widgets_and_gives_mrml_widgets_the_scene(ui):
    declared = {c.find("class").text for c in ui.iter("customwidget")}
    widgets = _widgets(ui)
    top = ui.find("widget").get("name")
    undeclared = {cls for cls in widgets.values() if cls not in QT_CLASSES} - declared
    assert not undeclared
    receivers = {c.find("receiver").text for c in ui.iter("connection")
                 if c.find("sender").text == top
                 and c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"}
    assert receivers == {name for name, cls in widgets.items() if cls in MRML_WIDGETS}


def test_module_file_imports_without_torch_or_monai():
    """Heavy packages load on first use only: Slicer can load the module before they are installed."""
    import subprocess
    import sys

    code = ("import slicer_module_stubs, sys; slicer_module_stubs.import_module_file(); "
            "print(sorted(m for m in ('torch', 'monai', 'scipy', 'SimpleITK') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


# --- CMake --------------------------------------------------------------------------------------
def _cmake_list(text, variable, module_name):
    match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} is not set"
    lines = [line.split("#")[0] for line in match.group(1).splitlines()]
    return [item.replace("${MODULE_NAME}", module_name) for item in " ".join(lines).split()]


@pytest.fixture(scope="module")
def module_cmake():
    text = MODULE_CMAKE.read_text()
    name = re.search(r"set\(\s*MODULE_NAME\s+(\w+)\s*\)", text).group(1)
    assert name == "LymphNodeMTL"
    return text, name


def test_cmake_scripts_are_the_module_file_and_every_lib_file(module_cmake):
    text, name = module_cmake
    scripts = _cmake_list(text, "MODULE_PYTHON_SCRIPTS", name)
    lib = sorted(p.relative_to(MODULE_DIR).as_posix() for folder in ("LymphNodeMTLLib", "LymphNodeMTLSlicerLib")
                 for p in (MODULE_DIR / folder).rglob("*.py"))
    assert any(path.startswith("LymphNodeMTLSlicerLib/") for path in lib)
    expected = [f"{name}.py", *lib]
    missing = sorted(set(expected) - set(scripts))
    extra = sorted(set(scripts) - set(expected))
    assert not missing and not extra, f"add to MODULE_PYTHON_SCRIPTS: {missing}; remove: {extra}"
    assert len(scripts) == len(set(scripts))


def test_cmake_resources_are_every_module_resource(module_cmake):
    text, name = module_cmake
    resources = _cmake_list(text, "MODULE_PYTHON_RESOURCES", name)
    existing = sorted(p.relative_to(MODULE_DIR).as_posix()
                      for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file())
    missing = sorted(set(existing) - set(resources))
    extra = sorted(set(resources) - set(existing))
    assert not missing and not extra, f"add to MODULE_PYTHON_RESOURCES: {missing}; remove: {extra}"
    for required in ("Resources/Icons/LymphNodeMTL.png", "Resources/UI/LymphNodeMTL.ui",
                     "Resources/LymphNodeMTL.term.json"):
        assert required in resources


def test_cmake_builds_the_module_registers_its_self_test_and_ships_the_model(module_cmake):
    text, _ = module_cmake
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}", text)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    # The bundled model: the four files of a model folder, from the folder the Lib loads by default.
    from LymphNodeMTLLib.network import model_store

    model = re.search(r"set\(_model_dir \$\{CMAKE_CURRENT_SOURCE_DIR\}/(\S+)\)", text).group(1)
    assert (MODULE_DIR / model).resolve() == (ROOT / "Resources" / "Models" / "phantom-demo")
    files = re.search(r"set\(_model_files ([^)]*)\)", text).group(1).split()
    assert sorted(files) == sorted([model_store.CONFIG_FILE, model_store.WEIGHTS_FILE,
                                    model_store.HASH_FILE, model_store.CARD_FILE])
    # ... installed where the Lib's default_model_dir() looks beside an installed Lib.
    assert "DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/Resources/Models/phantom-demo" in text


def test_extension_cmake_describes_the_extension():
    text = EXTENSION_CMAKE.read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS",
                "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf"set\({key} \"[^\"]+\"\)", text), key
    assert re.search(r'set\(EXTENSION_DEPENDS "PyTorch"\)', text)
    assert re.search(r'set\(EXTENSION_CATEGORY "Segmentation"\)', text)
    assert "find_package(Slicer REQUIRED)" in text
    assert "add_subdirectory(LymphNodeMTL)" in text
    assert "not for clinical use" in text


def test_s4ext_and_catalog_entry_agree_with_cmake():
    fields = {}
    for line in (ROOT / "LymphNodeMTL.s4ext").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    for key in ("scm", "scmurl", "depends", "homepage", "contributors", "category", "iconurl",
                "status", "description", "screenshoturls"):
        assert fields.get(key), key
    assert fields["depends"] == "PyTorch" and fields["category"] == "Segmentation"

    entry = json.loads((ROOT / "LymphNodeMTL.json").read_text())
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "build_subdirectory", "enabled", "tier"}  # catalog schema v1.0.1, no extra keys
    assert set(entry) <= allowed and {"$schema", "category", "scm_url"} <= set(entry)
    assert entry["category"] == "Segmentation" and entry["build_dependencies"] == ["PyTorch"]
    assert entry["scm_url"] == fields["scmurl"]
    # The two descriptions in step, field by field.
    assert entry["category"] == fields["category"]
    assert entry["scm_type"] == fields["scm"] and entry["scm_revision"] == fields["scmrevision"]
    assert " ".join(entry["build_dependencies"]) == fields["depends"]
    assert entry.get("build_subdirectory", ".") == fields.get("build_subdirectory", ".")
    assert str(int(entry.get("enabled", True))) == fields.get("enabled", "1")


def test_catalog_entry_is_formatted_as_the_extensions_index_lint_wants():
    """The index lints entries with Prettier and its multiline-arrays plugin: two-space indents,
    every array one element per line (even a single one), a final newline; json.dumps(indent=2)
    writes exactly that for this entry's flat shape."""
    text = (ROOT / "LymphNodeMTL.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n", \
        "LymphNodeMTL.json is not formatted as the Extensions Index lint wants: rewrite it with 2-space indents"
    assert '"build_dependencies": [\n    "PyTorch"\n  ]' in text


def test_cmake_range_is_that_of_the_slicer_versions_supported():
    """Slicer 5.10's extension template asks for CMake >= 3.20.6, 5.12's sets policies up to 3.28."""
    match = re.search(r"cmake_minimum_required\(VERSION ([\d.]+)\.\.\.([\d.]+) FATAL_ERROR\)",
                      EXTENSION_CMAKE.read_text())
    assert match, "the top-level CMakeLists.txt has no cmake_minimum_required(VERSION min...max FATAL_ERROR)"
    floor, policies = (tuple(int(v) for v in group.split(".")) for group in match.groups())
    assert floor >= (3, 20, 6) and policies >= (3, 28, 0)


def _s4ext_fields():
    fields = {}
    for line in (ROOT / "LymphNodeMTL.s4ext").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    return fields


def _cmake_value(key):
    match = re.search(rf'set\({key} "([^"]*)"\)', EXTENSION_CMAKE.read_text())
    assert match, key
    return match.group(1)


def test_icon_and_screenshot_urls_are_literal_and_name_files_in_the_repository():
    """The Extensions Index checker reads these without CMake: no ${...}, http(s), existing files."""
    fields = _s4ext_fields()
    entry = json.loads((ROOT / "LymphNodeMTL.json").read_text())
    repository = re.fullmatch(r"https://github.com/([^/]+/[^/]+?)(\.git)?", entry["scm_url"]).group(1)
    raw = f"https://raw.githubusercontent.com/{repository}/{entry['scm_revision']}/"
    for cmake_key, s4ext_key in (("EXTENSION_ICONURL", "iconurl"), ("EXTENSION_SCREENSHOTURLS", "screenshoturls")):
        urls = _cmake_value(cmake_key).split()
        assert urls and urls == fields[s4ext_key].split(), cmake_key
        for url in urls:
            assert "$" not in url and re.match(r"https?://", url), url
            assert url.startswith(raw), url
            path = ROOT / url[len(raw):]
            assert path.is_file(), f"{url} names {path}, which is not in the repository"
    assert _cmake_value("EXTENSION_HOMEPAGE") == fields["homepage"]
    assert "$" not in EXTENSION_CMAKE.read_text().split("find_package")[0]


def test_screenshot_is_a_real_picture():
    from PIL import Image, ImageStat

    path = ROOT / "Resources" / "Screenshots" / "LymphNodeMTL-1.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= 640
        stats = ImageStat.Stat(image.convert("L"))
        assert stats.stddev[0] > 20  # not a blank or flat image
        assert len(image.convert("RGB").getcolors(1 << 20) or []) > 100


def test_root_has_the_apache_license_pyproject_names():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert re.search(r'^license = "Apache-2.0"', (ROOT / "pyproject.toml").read_text(), re.M)


def test_the_icon_is_one_128_pixel_png_used_by_module_and_catalog():
    """One file: the module's resource, which the catalog's icon URL names (no copy to drift)."""
    from PIL import Image

    icon = MODULE_DIR / "Resources" / "Icons" / "LymphNodeMTL.png"
    with Image.open(icon) as image:
        assert image.format == "PNG" and image.size == (128, 128)
    icons = [p for p in ROOT.rglob("LymphNodeMTL.png") if ".git" not in p.parts and "build" not in p.parts]
    assert icons == [icon]
    assert _cmake_value("EXTENSION_ICONURL").endswith("/" + icon.relative_to(ROOT).as_posix())


def test_module_and_its_slicer_helpers_start_no_python_thread():
    """PythonQt holds the GIL while Slicer idles: a Python thread would crawl. Work goes to the
    server process; the module only ticks from timers."""
    for path in [MODULE_FILE, *sorted(SLICER_LIB.glob("*.py"))]:
        tree = ast.parse(path.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
        assert not imported & {"threading", "concurrent", "multiprocessing", "_thread"}, path.name


# --- terminology ----------------------------------------------------------------------------------
def test_terminology_file_has_the_lymph_node_code_slicer_uses():
    from LymphNodeMTLLib.core.segment_tags import LYMPH_NODE_TERMINOLOGY

    term = json.loads(TERM_FILE.read_text())
    (category,) = term["SegmentationCodes"]["Category"]
    (node_type,) = category["Type"]
    _, category_code, type_code, *_ = LYMPH_NODE_TERMINOLOGY.split("~")
    assert f"SCT^{category['CodeValue']}^{category['CodeMeaning']}" == category_code
    assert f"SCT^{node_type['CodeValue']}^{node_type['CodeMeaning']}" == type_code == "SCT^59441001^Lymph node"
    assert len(node_type["recommendedDisplayRGBValue"]) == 3


def test_slicer_loads_the_terminology_file():
    from slicer_harness import import_slicer_or_skip

    slicer = import_slicer_or_skip()
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    name = logic.LoadTerminologyFromFile(str(TERM_FILE))
    assert name == json.loads(TERM_FILE.read_text())["SegmentationCategoryTypeContextName"]
    entry = slicer.vtkSlicerTerminologyEntry()
    assert logic.FindTypeInTerminologyBy3dSlicerLabel(name, "lymph node", entry)
    assert entry.GetTypeObject().GetCodeValue() == "59441001"
    assert entry.GetCategoryObject().GetCodeValue() == "85756007"
    assert list(entry.GetTypeObject().GetRecommendedDisplayRGBValue()) == [68, 172, 100]


def test_segments_point_to_the_module_terminology_file():
    """The context of the segments' terminology entry is the list the module loads, and in that list
    the entry's category and type codes resolve."""
    import slicer_module_stubs
    from slicer_harness import import_slicer_or_skip

    slicer = import_slicer_or_skip()
    module = slicer_module_stubs.import_module_file()
    context, category, node_type, *_ = module.MODULE_TERMINOLOGY.split("~")
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    assert logic.LoadTerminologyFromFile(str(module.TERMINOLOGY_FILE)) == context
    assert module.TERMINOLOGY_FILE == TERM_FILE.resolve()
    found = slicer.vtkSlicerTerminologyEntry()
    assert logic.FindTypeInTerminologyBy3dSlicerLabel(context, "lymph node", found)
    code = lambda item: f"{item.GetCodingSchemeDesignator()}^{item.GetCodeValue()}^{item.GetCodeMeaning()}"  # noqa: E731
    assert (code(found.GetCategoryObject()), code(found.GetTypeObject())) == (category, node_type)
    assert node_type == "SCT^59441001^Lymph node"
