"""The Python packages a local inference server needs inside Slicer's Python, checked by version
and installed after one confirmation that lists them.

torch comes from the PyTorch extension (PyTorchUtils picks the build for the GPU); everything else
from PyPI with min and max pins and --no-deps, in one pip call, so that pip never replaces Slicer's
own numpy, SimpleITK or pydicom. A remote server needs nothing here: the client side uses numpy only.
"""

import importlib.metadata
import importlib.util

import slicer

# What is installed: monai 1.6 needs torch >= 2.8, and a fresh torch 2.13 install is reported broken
# in Slicer 5.12.2 on Windows. What is accepted: any torch MONAI can use; a torch that is already
# there and runs is not replaced for the upper pin, which only guards fresh installs.
TORCH_REQUIREMENT = ">=2.8,<2.13"
TORCH_ACCEPTED = ">=2.8"
# distribution -> (import name, requirement). Only pure-Python or self-contained wheels, each pinned
# on both sides; the server's HTTP stack is listed package by package because of --no-deps.
PIP_REQUIREMENTS = {
    "monai": ("monai", "monai>=1.6,<1.7"),
    "safetensors": ("safetensors", "safetensors>=0.4,<1"),
    "tqdm": ("tqdm", "tqdm>=4.60,<5"),
    "scipy": ("scipy", "scipy>=1.10,<2"),
    "fastapi": ("fastapi", "fastapi>=0.110,<1"),
    "starlette": ("starlette", "starlette>=0.37,<2"),
    "pydantic": ("pydantic", "pydantic>=2.6,<3"),
    "pydantic-core": ("pydantic_core", "pydantic-core>=2.14,<3"),
    "annotated-types": ("annotated_types", "annotated-types>=0.6,<1"),
    "typing-inspection": ("typing_inspection", "typing-inspection>=0.4,<1"),
    "typing-extensions": ("typing_extensions", "typing-extensions>=4.12,<5"),
    "anyio": ("anyio", "anyio>=4,<5"),
    "idna": ("idna", "idna>=3,<4"),
    "uvicorn": ("uvicorn", "uvicorn>=0.29,<1"),
    "h11": ("h11", "h11>=0.14,<1"),
    "click": ("click", "click>=8,<9"),
}
# What DICOM SEG export needs. Never installed from here: highdicom 0.27 needs pydicom 3, and
# Slicer 5.10 ships pydicom 2.4 that its own DICOM module relies on.
DICOM_SEG_NEEDS = ("DICOM SEG export needs highdicom>=0.27 with pydicom>=3 in Slicer's Python "
                   "(Slicer 5.12 ships both). Slicer 5.10 ships pydicom 2.4, which its DICOM module "
                   "needs: do not upgrade it there; use Slicer's own DICOM export instead (Data module, "
                   "right-click the segmentation, Export to DICOM, with the QuantitativeReporting "
                   "extension).")


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
    specifier = _requirement(requirement).specifier
    if not specifier.contains(version, prereleases=True):
        return f"{requirement} (installed: {version})"
    return None


def missingRequirements() -> dict:
    """distribution -> why it must be (re)installed, for everything a local server needs."""
    missing = {}
    if unmetRequirement("torch", f"torch{TORCH_ACCEPTED}", "torch"):
        version = installedVersion("torch")
        missing["torch"] = (f"torch{TORCH_REQUIREMENT} ({f'installed: {version}' if version else 'not installed'}), "
                            "through the PyTorch extension")
    for distribution, (importName, requirement) in PIP_REQUIREMENTS.items():
        why = unmetRequirement(distribution, requirement, importName)
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
    requirements = [PIP_REQUIREMENTS[name][1] for name in PIP_REQUIREMENTS if name in missing]
    if requirements:
        slicer.util.pip_install([*requirements, "--no-deps"])


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
    with slicer.util.WaitCursor():
        installRequirements(missing)
    importlib.invalidate_caches()
    still = missingRequirements()
    if still:
        raise RuntimeError("still not met after installation: " + "; ".join(still.values())
                           + ". Restart Slicer and try again.")
    return True
