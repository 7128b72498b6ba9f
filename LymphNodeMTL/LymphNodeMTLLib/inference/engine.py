"""The inference engine: Case -> NodeResults, with the model resident between calls.

predict():          seeds -> patches (one batched grid_sample) -> network -> masks pasted back into
                    the CT grid by bounding box -> overlaps resolved -> seed component kept ->
                    measurements.
classify_masks():   re-classification: the same path, but the head pools under given masks (a
                    radiologist's corrected segments) and the masks are returned untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch

from ..core.case import Case
from ..core.device import resolve_device
from ..core.geometry import VolumeGeometry
from ..core.measurements import measure_node
from ..core.node_result import NodeResult
from ..network.model_store import LoadedModel, default_model_dir, load_model
from ..preprocessing.network_input import network_input
from ..preprocessing.patch_sampler import sample_patches, volume_tensor
from .mask_pasting import PastedProbability, paste_patch_probability
from .overlap_resolution import resolve_overlaps
from .seed_component import keep_seed_component

Progress = Callable[[str, int, int], None]


class NodeEngine:
    """Keeps one model loaded on one device and runs cases through it.

    Args:
        model_dir: model folder; None for the bundled default.
        device: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda" or "cuda:N".
        batch_size: patches per forward pass; None picks one for the device.
    """

    def __init__(self, model_dir=None, device: str = "auto", batch_size: int | None = None):
        self.timings: dict[str, float] = {}
        with self._timed("load_model"):
            self.model: LoadedModel = load_model(model_dir or default_model_dir())
            self.device = resolve_device(device)
            self.network = self.model.network.to(self.device).eval()
        self.config = self.model.config
        self.batch_size = batch_size or (64 if self.device.type == "cuda" else 8)
        self.fallbacks: list[str] = []  # what the OOM handling did, for run.json
        self._volume, self._volume_key, self._volume_device = None, None, None
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed patch shape: autotuned kernels pay off

    @property
    def model_id(self) -> str:
        return self.config.model_id

    @contextmanager
    def _timed(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0

    # --- public API ---------------------------------------------------------------------------
    def predict(self, case: Case, progress: Progress | None = None) -> list[NodeResult]:
        """Masks, probabilities and measurements for every seed of `case`."""
        case.validate_seeds()
        centres = case.seed_array()
        mask_probs, logits = self._run_network(case, centres, None, progress)
        with self._timed("paste_back"):
            spacing = self.config.preprocessing.patch_spacing_mm
            boxes = [
                paste_patch_probability(mask_probs[n], case.geometry, centres[n], spacing)
                for n in range(len(centres))
            ]
            resolve_overlaps(boxes, self.config.mask_threshold)
        results = []
        with self._timed("postprocess"):
            for seed, box, logit in zip(case.seeds, boxes, logits):
                results.append(self._node_result(seed, box, logit, case.geometry))
        with self._timed("measurements"):
            for r in results:
                measure_node(r, case.image, case.geometry)
        return results

    def classify_masks(self, case: Case, results: list[NodeResult]) -> list[NodeResult]:
        """Re-classify nodes from their (edited) masks; returns new results, masks unchanged."""
        if not results:
            return []
        centres = np.array([r.seed_ras for r in results], dtype=float)
        mask_patches = self._mask_patches(case, results, centres)
        _, logits = self._run_network(case, centres, mask_patches, None)
        updated = []
        for r, logit in zip(results, logits):
            new = NodeResult(
                r.node_id, tuple(r.seed_ras), r.bbox_start_kji, r.bbox_stop_kji, r.mask.copy(),
                extra=dict(r.extra),
            )
            self._set_probability(new, logit)
            measure_node(new, case.image, case.geometry)
            updated.append(new)
        return updated

    # --- internals ----------------------------------------------------------------------------
    def _run_network(self, case, centres, mask_patches, progress):
        """Mask probabilities (on the CPU) and metastasis logits for every centre.

        Batches shrink on CUDA out-of-memory (halving down to one node), then the engine moves to
        the CPU, so a small GPU slows a run down instead of failing it.
        """
        probs, logits = [], []
        total, start = len(centres), 0
        while start < total:
            stop = min(start + self.batch_size, total)
            try:
                p, l = self._run_batch(case, centres[start:stop],
                                       None if mask_patches is None else mask_patches[start:stop])
            except torch.OutOfMemoryError:
                self._recover_from_oom()
                continue
            probs.append(p)
            logits.append(l)
            start = stop
            if progress:
                progress("nodes", stop, total)
        return torch.cat(probs), torch.cat(logits).numpy()

    def _run_batch(self, case, centres, mask_patches):
        pre = self.config.preprocessing
        with self._timed("sample_patches"):
            volume = self._volume_on_device(case.image)
            patches = sample_patches(volume, case.geometry, centres, pre.patch_size, pre.patch_spacing_mm)
            x = network_input(patches, pre)
        with self._timed("forward"), torch.inference_mode():
            given = None if mask_patches is None else mask_patches.to(self.device)
            slice_mm = torch.full((x.shape[0],), case.geometry.coarsest_spacing_mm, device=self.device)
            out = self.network(x, given, slice_mm=slice_mm)
            return torch.sigmoid(out.mask_logits[:, 0]).float().cpu(), out.metastasis_logit.float().cpu()

    def clear_volume_cache(self) -> None:
        """Forget the device copy of the CT (call after editing the CT array in place)."""
        self._volume, self._volume_key, self._volume_device = None, None, None

    def _volume_on_device(self, image: np.ndarray) -> torch.Tensor:
        """The CT on the device, copied once per image (re-classifying a node re-uses it)."""
        # holding the array itself (not its id) means a freed array's address can never be mistaken
        # for it; an array edited in place needs clear_volume_cache()
        if self._volume_key is not image or self._volume_device != self.device:
            self._volume = None  # free the old copy before making the new one
            self._volume = volume_tensor(image, self.device)
            self._volume_key, self._volume_device = image, self.device
        return self._volume

    def _recover_from_oom(self) -> None:
        self.clear_volume_cache()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.batch_size > 1:
            self.batch_size = max(1, self.batch_size // 2)
            self.fallbacks.append(f"out of memory: batch size {self.batch_size}")
        elif self.device.type != "cpu":
            self.device = torch.device("cpu")
            self.network = self.network.to(self.device)
            self.fallbacks.append("out of memory at batch size 1: continuing on the CPU")
        else:
            raise MemoryError("out of memory on the CPU even one node at a time; close other programs")

    def _mask_patches(self, case, results, centres) -> torch.Tensor:
        """Given masks, resampled onto each node's patch grid (nearest neighbour)."""
        pre = self.config.preprocessing
        out = []
        for r, centre in zip(results, centres):
            sub_geom = case.geometry.crop(r.bbox_start_kji, r.bbox_stop_kji)
            vol = torch.from_numpy(r.mask.astype(np.float32)).view(1, 1, *r.mask.shape)
            if min(r.mask.shape) < 2:  # grid_sample needs two voxels per axis: pad by one
                vol, sub_geom = _pad_one(vol, sub_geom)
            out.append(
                sample_patches(vol, sub_geom, centre[None], pre.patch_size, pre.patch_spacing_mm,
                               mode="nearest", outside_value=0.0)
            )
        return torch.cat(out)

    def _node_result(self, seed, box: PastedProbability, logit, geometry: VolumeGeometry):
        mask = box.probability > self.config.mask_threshold
        seed_local = geometry.ras_to_ijk_points(seed.ras)[0][::-1] - np.asarray(box.start_kji)
        mask = keep_seed_component(mask, seed_local, geometry.spacing[::-1])
        start, stop = _tight_box(mask, box.start_kji)
        local = tuple(slice(a - s, b - s) for a, b, s in zip(start, stop, box.start_kji))
        result = NodeResult(seed.node_id, tuple(seed.ras), start, stop, mask[local].copy())
        self._set_probability(result, logit)
        return result

    def _set_probability(self, result: NodeResult, logit: float) -> None:
        t = self.config.temperature
        result.probability = float(1.0 / (1.0 + np.exp(-float(logit) / t)))
        result.predicted_label = int(result.probability >= self.config.metastasis_threshold)
        result.extra["model_id"] = self.model_id
        result.extra["weights_sha256"] = self.model.weights_sha256


def _tight_box(mask: np.ndarray, start_kji):
    """Shrink a box to the mask's extent (an empty mask keeps a 1-voxel box at the start)."""
    if not mask.any():
        return tuple(start_kji), tuple(int(s) + 1 for s in start_kji)
    idx = np.argwhere(mask)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    return (tuple(int(s + a) for s, a in zip(start_kji, lo)),
            tuple(int(s + b) for s, b in zip(start_kji, hi)))


def _pad_one(vol: torch.Tensor, geometry: VolumeGeometry):
    padded = torch.nn.functional.pad(vol, (1, 1, 1, 1, 1, 1))
    start = (-1, -1, -1)
    stop = tuple(s + 1 for s in geometry.shape_kji)
    return padded, geometry.crop(start, stop)
