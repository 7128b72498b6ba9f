"""run.json: what produced a result (model, weights hash, software, device, timings) and which
files the run wrote. Written here only; output_folder.py reads its file list back."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from importlib import metadata as _metadata
from pathlib import Path

from ..core.version import __version__

RECORD_NAME = "run.json"

_PACKAGES = ("torch", "monai", "SimpleITK", "numpy", "scipy", "safetensors")


def package_versions() -> dict:
    versions = {"LymphNodeMTL": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_run_record(folder, engine, inputs: dict, n_nodes: int, case_metadata: dict, outputs,
                     extra: dict | None = None) -> dict:
    """Write run.json into `folder` (a run's staging folder) and return the record.

    Args:
        engine: the NodeEngine that ran (model, device, batch size, timings, fallbacks).
        inputs: what the run read, e.g. {"volume": path, "seeds": path}.
        n_nodes: how many nodes it answered.
        case_metadata: the case: its CT's grid and identifiers (DICOM PatientID, ...).
        outputs: the file names the run wrote; a later --overwrite run replaces exactly these.
        extra: further sections of the record (a follow-up's registration, what a DICOM SEG references).
    """
    record = _run_record(engine, inputs, n_nodes, case_metadata)
    record.update(extra or {})
    record["outputs"] = list(outputs)
    (Path(folder) / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _run_record(engine, inputs: dict, n_nodes: int, case_metadata: dict) -> dict:
    device = engine.device
    device_name = str(device)
    if device.type == "cuda":
        import torch

        device_name = f"{device} ({torch.cuda.get_device_name(device)})"
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model_id": engine.model_id,
        "weights_sha256": engine.model.weights_sha256,
        "model_folder": str(engine.model.folder),
        "clinical_use": engine.config.clinical_use,
        "device": device_name,
        "packages": package_versions(),
        "inputs": inputs,
        "case": case_metadata,
        "nodes": n_nodes,
        "timings_s": {k: round(v, 4) for k, v in engine.timings.items()},
        "batch_size": engine.batch_size,
        "fallbacks": list(engine.fallbacks),
        # the fields of view the model allows and the one each node was segmented in (mm)
        "zoom_spacings_mm": list(getattr(engine, "zoom_spacings_mm", ())),
        "uncertainty": bool(getattr(engine, "uncertainty", False)),
        "fields_of_view_mm": dict(getattr(engine, "last_fields_of_view_mm", {})),
    }
