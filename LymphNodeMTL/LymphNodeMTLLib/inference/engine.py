"""The inference engine: Case -> NodeResults, with the model resident between calls.

predict():          seeds -> patches (one batched grid_sample per field of view) -> network ->
                    a wider field of view for nodes that need one (field_of_view.py) -> masks
                    pasted back into the CT grid by bounding box -> overlaps resolved -> seed
                    component kept -> measurements -> optional uncertainty (the mask's stability under a
                    threshold change, mask_confidence.py: no further pass) -> a status per node
                    (node_status_rules.py).
                    Nodes with a line, a box or clicks run as prompt chains instead
                    (prompt_chain.py) and are re-classified from their final masks.
refine():           one node from its prompts (the server's and the Slicer module's click).
classify_masks():   re-classification: the head pools under given masks (a radiologist's corrected
                    segments) through the finest field of view that holds each mask; the masks
                    are returned untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager

import numpy as np
import torch

from ..core.case import Case, Seed
from ..core.errors import InputError
from ..core.device import resolve_device
from ..core.geometry import VolumeGeometry
from ..core.measurements import measure_node
from ..core.model_identity import ModelIdentity
from ..core.node_prompts import NodePrompts
from ..core.node_result import NodeResult
from ..network.model_store import LoadedModel, default_model_dir, load_model
from ..preprocessing.network_input import network_input
from ..preprocessing.patch_sampler import sample_patches, volume_tensor
from .field_of_view import (
    PatchView,
    choose_view,
    like_density_signs,
    needs_wider_view,
    patch_view,
    spacing_that_holds,
)
from .mask_confidence import LOW_STABILITY, threshold_stability
from .mask_pasting import PastedProbability, paste_patch_probability
from .node_status_rules import apply_status, holds_only_fat, in_soft_tissue, is_fragment, node_status_of, seed_hu
from .overlap_resolution import resolve_overlaps
from .prompt_chain import StepMemo, choose_prompt_view, run_chains
from .seed_component import keep_seed_component

Progress = Callable[[str, int, int], None]


class NodeEngine:
    """Keeps one model loaded on one device and runs cases through it.

    Args:
        model_dir: model folder; None for the bundled default.
        device: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda" or "cuda:N".
        batch_size: patches per forward pass; None picks one for the device.
        uncertainty: also say how sure the network is of each mask (mask_agreement: its
            stability under a threshold change; `low_agreement` status), read from the pass the
            node already had (mask_confidence.py): milliseconds a node. Off here so library
            callers (evaluation, training checks) get the statuses they always had; the predict
            command turns it on.
    """

    def __init__(self, model_dir=None, device: str = "auto", batch_size: int | None = None,
                 uncertainty: bool = False):
        self.timings: dict[str, float] = {}
        with self._timed("load_model"):
            self.model: LoadedModel = load_model(model_dir or default_model_dir())
            self.device = resolve_device(device)
            self.network = self.model.network.to(self.device).eval()
        self.config = self.model.config
        self.batch_size = batch_size or (64 if self.device.type == "cuda" else 8)
        self.uncertainty = bool(uncertainty)
        self.fallbacks: list[str] = []  # what the OOM handling did, for run.json
        # the last call's chosen field of view per node id, for run.json
        self.last_fields_of_view_mm: dict[str, float] = {}
        self._volume, self._volume_key, self._volume_device = None, None, None
        self._accepted_prompts = None  # (geometry, prompts) last checked: not checked twice
        self._steps = StepMemo()  # prompt-chain steps on the last CT: a new click runs one step
        # the metastasis head's features per node view on the last CT: re-classifying a node under
        # its next mask (a click after a click) runs the head alone
        self._head_features = StepMemo(capacity=8)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed patch shape: autotuned kernels pay off

    @property
    def model_id(self) -> str:
        return self.config.model_id

    @property
    def zoom_spacings_mm(self) -> tuple[float, ...]:
        """The patch spacings the model is valid for, finest first (the model config's)."""
        return tuple(self.config.zoom_spacings_mm)

    @contextmanager
    def _timed(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0

    # --- public API ---------------------------------------------------------------------------
    def predict(self, case: Case, progress: Progress | None = None,
                prompts: Mapping[str, NodePrompts] | None = None) -> list[NodeResult]:
        """Masks, probabilities, measurements and a status for every seed of `case`.

        prompts: per node id, what the radiologist gave besides the seed (core/node_prompts.py): a
        node with a line, a box or clicks runs as a prompt chain (prompt_chain.py) and its
        probability is read from its final mask as a re-classification reads a corrected one; the
        other nodes go the seed's way. A node without a seed has its anchor as its seed in `case`.
        """
        case.validate_seeds()
        node_prompts = self._node_prompts(case, prompts)
        centres = case.seed_array()
        n = len(centres)
        chained = [k for k, p in enumerate(node_prompts) if p is not None]
        seeded = [k for k in range(n) if node_prompts[k] is None or not node_prompts[k].has_extent]
        tracker = _ProgressTracker(progress, n, n + sum(len(node_prompts[k].clicks) for k in chained))
        views: list[list[PatchView]] = [[] for _ in range(n)]
        soft_tissue = np.ones(n, dtype=bool)  # a prompted node is where the radiologist says it is
        memo = self._steps.on(case.image, case.geometry)
        # a seed-started chain starts from its seed's zero-click views: remembered from the predict
        # or the click before on this CT, so a click runs only its own step
        remembered = {k: memo.get(tuple(centres[k])) for k in seeded if node_prompts[k] is not None}
        remembered = {k: v for k, v in remembered.items() if v is not None}
        to_look = [k for k in seeded if k not in remembered]
        if to_look:
            looked, on_soft_tissue = self._look(case, centres[to_look], tracker)
            for row, k in enumerate(to_look):
                views[k], soft_tissue[k] = looked[row], on_soft_tissue[row]
                memo.put((looked[row], on_soft_tissue[row]), tuple(centres[k]))
        for k, (looked, on_soft_tissue) in remembered.items():
            views[k], soft_tissue[k] = looked, on_soft_tissue
        soft_tissue[chained] = True  # the radiologist's prompts say where the node is
        chosen = [choose_view(v) if v else None for v in views]
        view_centres = centres.copy()
        if chained:
            with self._timed("prompts"):
                self._follow_prompts(case, node_prompts, chained, chosen, views, view_centres, tracker)
        with self._timed("paste_back"):
            boxes = [paste_patch_probability(view.probability, case.geometry, view_centres[k], view.spacing_mm)
                     for k, view in enumerate(chosen)]
            resolve_overlaps(boxes, self.config.mask_threshold)
        results = []
        with self._timed("postprocess"):
            for k, (seed, box, view) in enumerate(zip(case.seeds, boxes, chosen)):
                keep = [seed.ras] if node_prompts[k] is None else _positive_points(node_prompts[k])
                result = self._node_result(seed, box, view.logit, case.geometry, keep)
                result.field_of_view_mm = view.field_of_view_mm
                result.extra["fields_of_view_mm"] = [v.field_of_view_mm for v in views[k]]
                results.append(result)
        with self._timed("measurements"):
            for k, r in enumerate(results):
                # no node there: said as an empty mask, not drawn (a prompted node is the radiologist's)
                if node_prompts[k] is None and holds_only_fat(r, case.image):
                    r.extra["fat_only_mask_voxels"] = int(r.mask.sum())
                    r.mask[...] = False
                if node_prompts[k] is None and is_fragment(r, case.geometry, chosen[k].spacing_mm):
                    r.extra["fragment_mask_voxels"] = int(r.mask.sum())
                    r.mask[...] = False
                measure_node(r, case.image, case.geometry)
        if chained:  # a prompted mask is read as a corrected one is: on the plain input
            logits, _, _ = self._mask_logits(case, [results[k] for k in chained])
            for k, logit in zip(chained, logits):
                self._set_probability(results[k], logit)
                results[k].extra["prompts"] = len(node_prompts[k].clicks)
        usable = [k for k, (r, view) in enumerate(zip(results, chosen))
                  if node_prompts[k] is None and soft_tissue[k] and view.complete and not r.is_empty]
        if self.uncertainty:
            with self._timed("uncertainty_total"):
                for k in usable:
                    results[k].mask_agreement = threshold_stability(chosen[k].probability.numpy(),
                                                                    chosen[k].spacing_mm)
        for k, (r, view) in enumerate(zip(results, chosen)):
            apply_status(r, node_status_of(r, soft_tissue[k], not view.complete, case.geometry, LOW_STABILITY))
        self._count_fields_of_view(results)
        tracker.finish()
        return results

    def refine(self, case: Case, prompts: NodePrompts) -> NodeResult:
        """One node from its prompts (its seed in `case` among others, or added as its anchor):
        mask, status, measurements and the re-classified probability."""
        seed = next((s for s in case.seeds if s.node_id == prompts.node_id), None)
        if seed is None:
            seed = Seed(prompts.node_id, tuple(float(v) for v in (prompts.seed or prompts.anchor)))
        single = Case(case.image, case.geometry, [seed], case.metadata)
        return self.predict(single, prompts={prompts.node_id: prompts})[0]

    def classify_masks(self, case: Case, results: list[NodeResult]) -> list[NodeResult]:
        """Re-classify nodes from their (edited) masks; returns new results, masks unchanged.

        Each mask is seen through the finest field of view that holds it whole (it is never
        zoomed or cut to fit one); an empty mask, one cut at the CT's edge, or one too large for
        the widest view gets that status and no probability.
        """
        if not results:
            return []
        logits, spacings, fits = self._mask_logits(case, results)
        size = self.config.preprocessing.patch_size
        updated = []
        for r, logit, spacing, fit in zip(results, logits, spacings, fits):
            new = NodeResult(
                r.node_id, tuple(r.seed_ras), r.bbox_start_kji, r.bbox_stop_kji, r.mask.copy(),
                extra=dict(r.extra),
            )
            self._set_probability(new, logit)
            new.field_of_view_mm = size * spacing
            new.extra["fields_of_view_mm"] = [new.field_of_view_mm]
            measure_node(new, case.image, case.geometry)
            apply_status(new, node_status_of(new, True, not fit, case.geometry, 0.0))
            updated.append(new)
        self._count_fields_of_view(updated)
        return updated

    def _mask_logits(self, case: Case, results: list[NodeResult]):
        """Metastasis logits of nodes under their given masks (plain input: seed guidance, no
        prompts), each through the finest view that holds its mask; with those spacings and
        whether each mask fits its view."""
        centres = np.array([r.seed_ras for r in results], dtype=float)
        size = self.config.preprocessing.patch_size
        spacings, fits = [], []
        for r, centre in zip(results, centres):
            spacing, fit = spacing_that_holds(_mask_reach_mm(r, case.geometry, centre), size,
                                              self.zoom_spacings_mm)
            spacings.append(spacing)
            fits.append(fit)
        logits = np.zeros(len(results))
        for spacing in sorted(set(spacings)):
            group = [k for k, s in enumerate(spacings) if s == spacing]
            mask_patches = self._mask_patches(case, [results[k] for k in group], centres[group], spacing)
            logits[group] = self._logits_under(case, centres[group], spacing, mask_patches)
        return logits, spacings, fits

    # --- prompts ------------------------------------------------------------------------------
    def check_prompts(self, case: Case, prompts: Mapping[str, NodePrompts]) -> None:
        """Refuse, before any work, prompts this model or this CT cannot follow (predict would)."""
        self._node_prompts(case, prompts)

    def _node_prompts(self, case: Case, prompts) -> list[NodePrompts | None]:
        """Per seed of `case`, its prompts when it has more than a seed (else None), checked once:
        prompts already accepted on this CT (check_prompts where they entered the process) are
        not checked again."""
        prompts = dict(prompts or {})
        ids = {s.node_id for s in case.seeds}
        unknown = sorted(set(prompts) - ids)
        if unknown:
            raise InputError(f"prompts for node(s) {', '.join(unknown)} that have no seed; give each a seed, "
                             "a line or a box")
        accepted = self._accepted_prompts
        if not (accepted is not None and accepted[0] is case.geometry and accepted[1] == prompts):
            for p in prompts.values():
                p.validate(case.geometry)
        out = [None if (p := prompts.get(seed.node_id)) is None or p.is_seed_only else p for seed in case.seeds]
        if any(p is not None for p in out):
            self.require_prompt_channels()
        self._accepted_prompts = (case.geometry, prompts)
        return out

    def require_prompt_channels(self) -> None:
        """Refuse, in one line, prompts for a model that reads seeds only."""
        if not self.config.preprocessing.prompt_channels:
            raise InputError(f"the model {self.model_id} reads seeds only; use a model with prompt channels "
                             "for lines, boxes and clicks")

    def _follow_prompts(self, case, node_prompts, chained, chosen, views, view_centres, tracker) -> None:
        """Run the prompt chains of the `chained` nodes; their chosen view, views and view centre
        become the chain's, in place."""
        size = self.config.preprocessing.patch_size
        threshold = self.config.mask_threshold
        chain_views, first = [], []
        for k in chained:
            p = node_prompts[k]
            start = None if p.has_extent else chosen[k].spacing_mm
            view = choose_prompt_view(p, self.zoom_spacings_mm, size, start)
            chain_views.append(view)
            same = not p.has_extent and view.spacing_mm == chosen[k].spacing_mm
            first.append((chosen[k].probability, chosen[k].logit) if same else None)

        def run(centres, spacing, patch_prompts):
            # a step's mask alone: its node is re-classified under the chain's final mask
            probs, logits, _ = self._run_network(case, centres, spacing, None, prompts=patch_prompts, tracker=tracker,
                                                 mask_only=True)
            return probs, logits

        finals = run_chains(run, [node_prompts[k] for k in chained], chain_views, size, threshold, first,
                            self._steps.on(case.image, case.geometry))
        for k, view, (prob, logit) in zip(chained, chain_views, finals):
            chosen[k] = patch_view(prob, logit, view.spacing_mm, threshold)
            views[k] = [chosen[k]]
            view_centres[k] = view.centre_ras

    # --- fields of view -----------------------------------------------------------------------
    def _look(self, case, centres, tracker):
        """Every node through the finest view, then wider ones while it needs them.

        Returns per node its views (finest first) and whether its seed is on soft tissue.
        """
        spacings = self.zoom_spacings_mm
        threshold = self.config.mask_threshold
        views: list[list[PatchView]] = [[] for _ in centres]
        pending = list(range(len(centres)))
        soft_tissue = np.ones(len(centres), dtype=bool)
        like_beyond = np.zeros(len(centres), dtype=bool)
        edgeless = np.full(len(centres), np.nan)
        for level, spacing in enumerate(spacings):
            if not pending:
                break
            if level > 0:
                tracker.add(len(pending))
            # the wider views' share of the time, for run.json and the benchmark (their sampling and
            # forward passes are also in sample_patches and forward)
            with self._timed("zoom_total" if level else "first_view_total"):
                probs, logits, first = self._run_network(case, centres[pending], spacing, None,
                                                         tracker=tracker, first_view=level == 0)
            for row, k in enumerate(pending):
                views[k].append(patch_view(probs[row], logits[row], spacing, threshold))
            if level == 0:
                soft_tissue[pending] = [in_soft_tissue(h) for h in first["seed_hu"]]
                like_beyond[pending] = first["like_density_beyond"]
                edgeless[pending] = first["edgeless_share"]
            # a seed off soft tissue is no node: a wider view would only find a larger structure
            pending = [k for k in pending if soft_tissue[k] and needs_wider_view(views[k], like_beyond[k], edgeless[k])]
        return views, soft_tissue

    def _count_fields_of_view(self, results) -> None:
        self.last_fields_of_view_mm = {str(r.node_id): float(r.field_of_view_mm) for r in results}

    # --- internals ----------------------------------------------------------------------------
    def _run_network(self, case, centres, spacing, mask_patches, tracker=None,
                     first_view=False, prompts=None, mask_only=False):
        """Mask probabilities (on the CPU) and metastasis logits for every centre, through patches
        of `spacing` mm; `prompts`: per centre, its prompts on the patch grid (PatchPrompts); mask_only: the mask
        branch alone (the logits are zeros).

        first_view: also return, per centre, the seed's HU and the like-density signs
        (field_of_view.py), read from the same HU patches.

        Batches shrink on CUDA out-of-memory (halving down to one node), then the engine moves to
        the CPU, so a small GPU slows a run down instead of failing it.
        """
        probs, logits = [], []
        first = {"seed_hu": [], "like_density_beyond": [], "edgeless_share": []}
        total, start = len(centres), 0
        while start < total:
            stop = min(start + self.batch_size, total)
            try:
                p, l, hu = self._run_batch(case, centres[start:stop], spacing,
                                           None if mask_patches is None else mask_patches[start:stop],
                                           None if prompts is None else prompts[start:stop], mask_only)
            except torch.OutOfMemoryError:
                self._recover_from_oom()
                continue
            if first_view:
                first["seed_hu"].extend(seed_hu(hu, spacing).tolist())
                masks = [patch_view(pi, 0.0, spacing, self.config.mask_threshold).mask for pi in p]
                beyond, edgeless = like_density_signs(hu, masks)
                first["like_density_beyond"].extend(beyond.tolist())
                first["edgeless_share"].extend(edgeless.tolist())
            probs.append(p)
            logits.append(l)
            start = stop
            if tracker:
                tracker.advance(len(p))
        return torch.cat(probs), torch.cat(logits).numpy(), first

    def _run_batch(self, case, centres, spacing, mask_patches, prompts=None, mask_only=False):
        x, hu = self._network_input(case, centres, spacing, prompts)
        with self._timed("forward"), torch.inference_mode():
            if mask_only:
                mask_logits, logit = self.network.segment(x), torch.zeros(x.shape[0])
            else:
                given = None if mask_patches is None else mask_patches.to(self.device)
                out = self.network(x, given, slice_mm=self._slice_mm(case, x), spacing_mm=spacing)
                mask_logits, logit = out.mask_logits, out.metastasis_logit
            prob = torch.sigmoid(mask_logits[:, 0]).float()
            return prob.cpu(), logit.float().cpu(), hu

    def _network_input(self, case, centres, spacing, prompts=None):
        """(network input, HU patches) of the views of `spacing` mm at `centres`."""
        pre = self.config.preprocessing
        with self._timed("sample_patches"):
            volume = self._volume_on_device(case.image)
            hu = sample_patches(volume, case.geometry, centres, pre.patch_size, spacing)
            return network_input(hu, pre, prompts), hu

    def _slice_mm(self, case, x) -> torch.Tensor:
        return torch.full((x.shape[0],), case.geometry.coarsest_spacing_mm, device=self.device)

    def _logits_under(self, case, centres, spacing, mask_patches) -> np.ndarray:
        """Metastasis logits of the views of `spacing` mm at `centres` under the given mask
        patches (plain input). The head's features of a view depend on the CT alone: they are
        computed once per view and CT, so only the head runs again for a node's next mask."""
        memo = self._head_features.on(case.image, case.geometry)
        logits, start = [], 0
        while start < len(centres):
            stop = min(start + self.batch_size, len(centres))
            try:
                logits.append(self._logits_under_batch(case, memo, centres[start:stop], spacing,
                                                       mask_patches[start:stop]))
            except torch.OutOfMemoryError:
                self._recover_from_oom()
                memo = self._head_features.on(case.image, case.geometry)
                continue
            start = stop
        return np.concatenate(logits)

    def _logits_under_batch(self, case, memo, centres, spacing, mask_patches) -> np.ndarray:
        keys = [(tuple(float(v) for v in c), float(spacing)) for c in centres]
        found = [memo.get(*key) for key in keys]
        missing = [k for k, f in enumerate(found) if f is None]
        if missing:
            x, _ = self._network_input(case, centres[missing], spacing)
            with self._timed("forward"), torch.inference_mode():
                feats = self.network.classification_features(x)
            for row, k in enumerate(missing):
                found[k] = ([f[row:row + 1] for f in feats], x[row:row + 1])
                memo.put(found[k], *keys[k])
        with self._timed("forward"), torch.inference_mode():
            feats = [torch.cat([f[level] for f, _ in found]) for level in range(len(found[0][0]))]
            x = torch.cat([xi for _, xi in found])
            logits = self.network.classify_under(feats, mask_patches.to(self.device), x,
                                                 slice_mm=self._slice_mm(case, x), spacing_mm=spacing)
        return logits.float().cpu().numpy()

    def clear_volume_cache(self) -> None:
        """Forget the device copy of the CT and what was computed on it (call after editing the CT
        array in place)."""
        self._volume, self._volume_key, self._volume_device = None, None, None
        self._steps.clear()
        self._head_features.clear()

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

    def _mask_patches(self, case, results, centres, spacing) -> torch.Tensor:
        """Given masks, resampled onto each node's patch grid of `spacing` mm (nearest neighbour)."""
        pre = self.config.preprocessing
        out = []
        for r, centre in zip(results, centres):
            sub_geom = case.geometry.crop(r.bbox_start_kji, r.bbox_stop_kji)
            vol = torch.from_numpy(r.mask.astype(np.float32)).view(1, 1, *r.mask.shape)
            if min(r.mask.shape) < 2:  # grid_sample needs two voxels per axis: pad by one
                vol, sub_geom = _pad_one(vol, sub_geom)
            out.append(
                sample_patches(vol, sub_geom, centre[None], pre.patch_size, spacing,
                               mode="nearest", outside_value=0.0)
            )
        return torch.cat(out)

    def _node_result(self, seed, box: PastedProbability, logit, geometry: VolumeGeometry, keep_points):
        """The node's result from its pasted probability: thresholded, the components at
        `keep_points` (RAS: its seed, or its anchor, seed and positive clicks) kept."""
        mask = box.probability > self.config.mask_threshold
        local = geometry.ras_to_ijk_points(keep_points)[:, ::-1] - np.asarray(box.start_kji)
        mask = keep_seed_component(mask, local, geometry.spacing[::-1])
        start, stop = _tight_box(mask, box.start_kji)
        local = tuple(slice(a - s, b - s) for a, b, s in zip(start, stop, box.start_kji))
        result = NodeResult(seed.node_id, tuple(seed.ras), start, stop, mask[local].copy())
        self._set_probability(result, logit)
        return result

    def _probability(self, logit: float) -> float:
        return float(1.0 / (1.0 + np.exp(-float(logit) / self.config.temperature)))

    def _set_probability(self, result: NodeResult, logit: float) -> None:
        result.probability = self._probability(logit)
        result.predicted_label = int(result.probability >= self.config.metastasis_threshold)
        result.model = ModelIdentity(self.model_id, self.model.weights_sha256)


def _positive_points(prompts: NodePrompts) -> np.ndarray:
    """(K, 3) RAS points a prompted node's mask must hold: its anchor, seed and positive clicks."""
    points = [prompts.anchor] + ([prompts.seed] if prompts.seed is not None else [])
    points += [c.ras for c in prompts.clicks if c.positive]
    return np.asarray(points, dtype=float)


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


def _mask_reach_mm(result: NodeResult, geometry: VolumeGeometry, centre_ras) -> float:
    """How far (mm, along any RAS axis, to the voxel's edge) a CT-grid mask reaches from `centre_ras`."""
    idx = np.argwhere(result.mask)
    if not len(idx):
        return 0.0
    ras = geometry.ijk_to_ras_points((idx + np.asarray(result.bbox_start_kji))[:, ::-1])
    # a voxel's half extent along RAS, whatever the grid's orientation
    half = 0.5 * np.abs(geometry.ijk_to_ras[:3, :3]).sum(axis=1)
    return float((np.abs(ras - np.asarray(centre_ras, dtype=float)) + half).max())


class _ProgressTracker:
    """Progress in nodes, over all passes: the first view, wider views and prompt steps are
    counted as patches and reported as the share of `nodes` done, never going back."""

    def __init__(self, progress: Progress | None, nodes: int, planned_patches: int):
        self.progress, self.nodes = progress, nodes
        self.planned, self.done, self.reported = max(planned_patches, 1), 0, 0

    def add(self, patches: int) -> None:
        self.planned += patches

    def advance(self, patches: int) -> None:
        self.done += patches
        value = min(self.nodes, int(self.nodes * self.done / self.planned))
        if self.done >= self.planned:
            value = self.nodes
        self._report(value)

    def finish(self) -> None:
        self._report(self.nodes)

    def _report(self, value: int) -> None:
        if self.progress and value > self.reported:
            self.reported = value
            self.progress("nodes", value, self.nodes)
