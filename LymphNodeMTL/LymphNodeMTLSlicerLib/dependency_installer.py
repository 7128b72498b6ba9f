"""The Python packages a local inference server needs inside Slicer's Python, checked by version
and installed after one confirmation that lists them.

torch comes from the PyTorch extension (PyTorchUtils picks the build for the GPU); everything else
from PyPI at tested versions, so that pip never replaces Slicer's own numpy, SimpleITK or pydicom.
Slicer >= 5.11 has `slicer.packaging`: its pip_check tells what is met, and pip_ensure installs (with
its progress dialog and its offer to restart when an imported package changed), the tested versions
as a constraints file and Slicer's own packages in skip_packages. Slicer 5.10 has none of that: one
pinned pip call with --no-deps. A remote server needs nothing here: the client side uses numpy only.
"""

import importlib.metadata
import importlib.util
import tempfile
from pathlib import Path

import slicer

# What is installed: monai 1.6 needs torch >= 2.8, and a fresh torch 2.13 install is reported broken
# in Slicer 5.12.2 on Windows. What is accepted: any torch MONAI can use; a torch that is already
# there and runs is not replaced for the upper pin, which only guards fresh installs.
TORCH_REQUIREMENT = ">=2.8,<2.13"
TORCH_ACCEPTED = ">=2.8"
# distribution -> (import name, accepted, installed). Accepted: a version already there that works
# is kept. Installed: exact versions tested together (pip runs with --no-deps, so it cannot pick
# a matching set itself; the server's HTTP stack is therefore listed package by package).
PIP_REQUIREMENTS = {
    "monai": ("monai", ">=1.6,<1.7", "==1.6.1"),
    "safetensors": ("safetensors", ">=0.4,<1", "==0.8.0"),
    "tqdm": ("tqdm", ">=4.60,<5", ">=4.60,<5"),
    "scipy": ("scipy", ">=1.10,<2", ">=1.10,<2"),
    "fastapi": ("fastapi", ">=0.165,<1", "==0.165.0"),
    "starlette": ("starlette", ">=1.6,<2", "==1.10.0"),
    "pydantic": ("pydantic", ">=2.9,<3", "==2.14.4"),
    "pydantic-core": ("pydantic_core", ">=2.50,<3", "==2.50.5"),
    "annotated-types": ("annotated_types", ">=0.6,<1", "==0.8.0"),
    "annotated-doc": ("annotated_doc", ">=0.0.2,<1", "==0.0.7"),
    "typing-inspection": ("typing_inspection", ">=0.4.4,<1", "==0.4.5"),
    "typing-extensions": ("typing_extensions", ">=4.16,<5", "==4.16.0"),
    "opentelemetry-api": ("opentelemetry", ">=1.44,<2", "==1.45.2"),
    "anyio": ("anyio", ">=4.1,<5", "==4.16.0"),
    "idna": ("idna", ">=2.8,<4", ">=2.8,<4"),
    "uvicorn": ("uvicorn", ">=0.54,<1", "==0.54.0"),
    "h11": ("h11", ">=0.8,<1", "==0.16.0"),
    "click": ("click", ">=7,<9", "==8.5.1"),
}
# Never installed or replaced from here: Slicer's own, and torch (the PyTorch extension's).
SLICER_OWNED = ("torch", "numpy", "SimpleITK", "pydicom", "highdicom")
REQUESTER = "Lymph Node MTL"  # names the module in slicer.packaging's dialogs
# What DICOM SEG export needs. Never installed from here: highdicom 0.27 needs pydicom 3, and
# Slicer 5.10 ships pydicom 2.4 that its own DICOM module relies on.
DICOM_SEG_NEEDS = ("DICOM SEG export needs highdicom>=0.27 with pydicom>=3 in Slicer's Python "
                   "(Slicer 5.12 ships both). Slicer 5.10 ships pydicom 2.4, which its DICOM module "
                   "needs: do not upgrade it there; export with QuantitativeReporting's DICOM SEG "
                   "plugin instead (Data module, right-click the segmentation, Export to DICOM).")


def slicerPackaging():
    """Slicer's `slicer.packaging` (Slicer >= 5.11), else None."""
    try:
        import slicer.packaging as packaging
    except ImportError:
        return None
    return packaging if hasattr(packaging, "pip_ensure") and hasattr(packaging, "pip_check") else None


def _requirement(text: str):
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip always vendors packaging
        from pip._vendor.packaging.requirements import Requirement
    return Requirement(text)


def installedVersion(distribution: str):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def unmetRequirement(distribution: str, requirement: str, importName: str):
    """None when installed at a version the requirement allows, else a line saying why not."""
    version = installedVersion(distribution)
    if version is None or importlib.util.find_spec(importName) is None:
        return f"{requirement} (not installed)"
    packaging = slicerPackaging()
    if packaging is not None:
        met = packaging.pip_check(requirement)
    else:
        met = _requirement(requirement).specifier.contains(version, prereleases=True)
    return None if met else f"{requirement} (installed: {version})"


def missingRequirements() -> dict:
    """distribution -> why it must be (re)installed, for everything a local server needs."""
    missing = {}
    if unmetRequirement("torch", f"torch{TORCH_ACCEPTED}", "torch"):
        version = installedVersion("torch")
        missing["torch"] = (f"torch{TORCH_REQUIREMENT} ({f'installed: {version}' if version else 'not installed'}), "
                            "through the PyTorch extension")
    for distribution, (importName, accepted, _installed) in PIP_REQUIREMENTS.items():
        why = unmetRequirement(distribution, distribution + accepted, importName)
        if why:
            missing[distribution] = why
    return missing


def confirmationText(missing: dict) -> str:
    listing = "\n".join(f"  - {why}" for why in missing.values())
    return ("Lymph Node MTL runs its engine in a local server with Slicer's Python, which needs these "
            f"packages:\n{listing}\n\nInstall them now? This downloads several hundred MB and can take "
            "a few minutes. Slicer's own numpy, SimpleITK and pydicom are kept.")


def installRequirements(missing: dict) -> None:
    """torch through PyTorchUtils (no second question), the rest in one pinned pip call."""
    if "torch" in missing:
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError("the PyTorch extension is not installed: install 'PyTorch' from the "
                               "Extensions Manager, restart Slicer, and press Apply again") from None
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
        if torch is None:
            raise RuntimeError("PyTorch was not installed")
    names = [name for name in PIP_REQUIREMENTS if name in missing]
    if not names:
        return
    packaging = slicerPackaging()
    if packaging is None:  # Slicer 5.10
        slicer.util.pip_install([*(name + PIP_REQUIREMENTS[name][2] for name in names), "--no-deps"])
        return
    with tempfile.TemporaryDirectory() as folder:
        constraints = Path(folder) / "constraints.txt"
        constraints.write_text(constraintsText())
        packaging.pip_ensure([name + PIP_REQUIREMENTS[name][1] for name in names], constraints=str(constraints),
                             skip_packages=list(SLICER_OWNED), prompt_install=False, requester=REQUESTER)


def constraintsText() -> str:
    """The tested versions, one per line (pip's constraints file): what pip_ensure may install."""
    return "".join(f"{name}{installed}\n" for name, (_import, _accepted, installed) in PIP_REQUIREMENTS.items())


def ensureRequirements(confirm=None) -> bool:
    """Ask once to install what is missing or at a wrong version, install it; True when all is met.

    confirm(text) -> bool asks the user (default: Slicer's OK/Cancel dialog)."""
    missing = missingRequirements()
    if not missing:
        return True
    confirm = confirm or (lambda text: slicer.util.confirmOkCancelDisplay(
        text, windowTitle="Install Python packages"))
    if not confirm(confirmationText(missing)):
        return False
    if slicerPackaging() is not None:
        installRequirements(missing)  # slicer.packaging shows its own progress
    else:
        with slicer.util.WaitCursor():
            installRequirements(missing)
    importlib.invalidate_caches()
    still = missingRequirements()
    if still:
        raise RuntimeError("still not met after installation: " + "; ".join(still.values())
                           + ". Restart Slicer and try again.")
    return True
