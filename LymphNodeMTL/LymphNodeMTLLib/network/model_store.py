"""Model folders: config.json + safetensors weights + model-card.md + SHA-256 of config and weights.

Loading never executes pickled code: weights are safetensors, the config is JSON; the hashes
(model_checksums.py) and the config's schema (model_config_schema.py) are checked before a single
tensor is read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..core.errors import ModelError
from ..preprocessing.network_input import PreprocessingConfig
from .model_checksums import checksum_text, sha256_of, verify_checksums
from .model_config_schema import FORMAT, validate_model_config
from .network_config import NetworkConfig
from .node_descriptors import EARLIER_NUM_DESCRIPTORS, NUM_DESCRIPTORS
from .node_network import MultiTaskNodeNet

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
HASH_FILE = "model.safetensors.sha256"
CARD_FILE = "model-card.md"


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model and run it as it was trained."""

    model_id: str
    network: dict = field(default_factory=dict)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    mask_threshold: float = 0.5
    metastasis_threshold: float = 0.5
    temperature: float = 1.0  # logit temperature from calibration on validation nodes
    labels: tuple[str, str] = ("benign", "metastatic")
    clinical_use: bool = False
    training: dict = field(default_factory=dict)
    # patch spacings the network is valid for, finest first; the engine widens its field of view
    # over these only (same patch size, coarser spacing). None: the patch spacing alone (no zoom).
    zoom_spacings_mm: tuple[float, ...] | None = None

    def __post_init__(self):
        base = float(self.preprocessing.patch_spacing_mm)
        spacings = tuple(sorted({float(s) for s in (self.zoom_spacings_mm or (base,))}))
        if spacings[0] != base or any(s <= 0 for s in spacings):
            raise ValueError(f"zoom_spacings_mm {list(spacings)} must start at the patch spacing "
                             f"{base} mm and grow from there")
        self.zoom_spacings_mm = spacings

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "model_id": self.model_id,
            "network": self.network,
            "preprocessing": self.preprocessing.to_dict(),
            "postprocessing": {
                "mask_threshold": self.mask_threshold,
                "metastasis_threshold": self.metastasis_threshold,
            },
            "calibration": {"temperature": self.temperature},
            "labels": list(self.labels),
            "clinical_use": self.clinical_use,
            "zoom_spacings_mm": list(self.zoom_spacings_mm),
            "training": self.training,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        if d.get("format") != FORMAT:
            raise ValueError(f"format is {d.get('format')!r}, expected {FORMAT!r}")
        post = d.get("postprocessing", {})
        return cls(
            model_id=str(d["model_id"]),
            network=dict(d.get("network", {})),
            preprocessing=PreprocessingConfig.from_dict(d.get("preprocessing", {})),
            mask_threshold=float(post.get("mask_threshold", 0.5)),
            metastasis_threshold=float(post.get("metastasis_threshold", 0.5)),
            temperature=float(d.get("calibration", {}).get("temperature", 1.0)),
            labels=tuple(d.get("labels", ("benign", "metastatic"))),
            clinical_use=bool(d.get("clinical_use", False)),
            training=dict(d.get("training", {})),
            zoom_spacings_mm=d.get("zoom_spacings_mm"),
        )

    def network_config(self) -> NetworkConfig:
        """The "network" dict, typed and checked; patch spacing, HU window and input channels from
        the preprocessing unless the dict gives them."""
        return NetworkConfig.from_dict(self.network, patch_spacing_mm=self.preprocessing.patch_spacing_mm,
                                       hu_window=tuple(self.preprocessing.hu_window),
                                       in_channels=self.preprocessing.input_channels)

    def build_network(self) -> MultiTaskNodeNet:
        """The network this config describes (fresh weights)."""
        return MultiTaskNodeNet(self.network_config())


@dataclass
class LoadedModel:
    config: ModelConfig
    network: MultiTaskNodeNet
    weights_sha256: str
    folder: Path


def default_model_dir() -> Path:
    """The bundled demonstration model (override with LYMPHNODE_MTL_MODEL).

    Looked for beside the Lib inside an installed Slicer module (<module>/Resources/Models), then
    in the source tree's top-level Resources/Models.
    """
    env = os.environ.get("LYMPHNODE_MTL_MODEL")
    if env:
        return Path(env)
    lib_root = Path(__file__).resolve().parents[1]  # .../LymphNodeMTLLib
    candidates = [lib_root.parent / "Resources" / "Models" / "phantom-demo",
                  lib_root.parents[1] / "Resources" / "Models" / "phantom-demo"]
    return next((c for c in candidates if (c / CONFIG_FILE).is_file()), candidates[-1])


def record_checksums(folder) -> None:
    """Write the folder's checksum file over its config and weights as they are now: after a
    deliberate edit of config.json (a new model version's recipe, a test), never to hide damage."""
    folder = Path(folder)
    (folder / HASH_FILE).write_text(checksum_text(folder, (CONFIG_FILE, WEIGHTS_FILE)))


def save_model(folder, config: ModelConfig, network: torch.nn.Module, card_text: str) -> str:
    """Write the model files into `folder` (created if needed). Returns the weights' hash.

    Each file is written to a temporary name in the folder and then renamed over the old one, so
    no file is ever half-written; other files in the folder (a training checkpoint, the user's
    own) are left alone. The weights go in before their hash and the config last, and a reader
    that races a rewrite sees a hash mismatch, never silently mixed files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-model-", dir=folder))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"model_id": config.model_id})
        digest = sha256_of(tmp / WEIGHTS_FILE)
        (tmp / CARD_FILE).write_text(card_text)
        (tmp / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        record_checksums(tmp)
        for name in (WEIGHTS_FILE, HASH_FILE, CARD_FILE, CONFIG_FILE):
            os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return digest


REFINE_INPUT_LAYER = "head.refine.0.weight"


def widen_for_new_descriptors(state: dict, expected: dict) -> dict:
    """Weights saved before the last descriptors were added: zero weights for the new columns.

    Descriptors are the last columns of every head input and new ones are appended after them,
    so a layer that read the head input is short by exactly the added descriptors, at its end
    (in the refine MLP's first layer, just before its last column, the deep logit); zero weights
    there make the old model predict exactly as it did."""
    out = dict(state)
    for key, tensor in state.items():
        want = expected.get(key)
        if want is None or tensor.dim() != 2 or want.dim() != 2 or want.shape[0] != tensor.shape[0]:
            continue
        added = want.shape[1] - tensor.shape[1]
        if added > 0 and NUM_DESCRIPTORS - added in EARLIER_NUM_DESCRIPTORS:
            zeros = tensor.new_zeros(tensor.shape[0], added)
            if key.endswith(REFINE_INPUT_LAYER):  # reads the descriptors, then the deep logit last
                out[key] = torch.cat([tensor[:, :-1], zeros, tensor[:, -1:]], dim=1)
            else:
                out[key] = torch.cat([tensor, zeros], dim=1)
    return out


def load_model(folder) -> LoadedModel:
    """Load and verify a model folder; every problem is a one-line ModelError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist; pass --model with a model folder")
    for name in (CONFIG_FILE, WEIGHTS_FILE, HASH_FILE):
        if not (folder / name).is_file():
            raise ModelError(f"model folder {folder} has no {name}; it is incomplete, copy it again")
    try:
        raw = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except ValueError as e:  # also a config that is not UTF-8
        raise ModelError(f"{folder / CONFIG_FILE} is not a valid model config ({e})") from None
    actual = verify_checksums(folder, HASH_FILE, WEIGHTS_FILE, CONFIG_FILE)
    validate_model_config(raw, folder / CONFIG_FILE)
    try:
        config = ModelConfig.from_dict(raw)
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{folder / CONFIG_FILE} is not a valid model config ({e})") from None
    try:
        network = config.build_network()
        state = widen_for_new_descriptors(load_file(str(folder / WEIGHTS_FILE)), network.state_dict())
        network.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load weights from {folder}: {first} (a model written by an older "
                         "LymphNodeMTL, before the head read radiologic descriptors, must be retrained "
                         "with `lymphnode-mtl train`)") from None
    network.eval()
    return LoadedModel(config, network, actual, folder)
