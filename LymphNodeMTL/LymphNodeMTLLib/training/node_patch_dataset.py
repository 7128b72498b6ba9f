"""Per-node training patches: sampled once from the manifest's CTs (cached), augmented per step.

Each node is cached as a patch slightly larger than the network's, so a random crop moves the seed
by up to `jitter_mm` (the radiologist's click is never exactly central) without re-sampling the CT.
Across spacings, a node is cached once per spacing level (the same voxel count at each, so a coarser
level covers a wider field of view); each training step draws one of the node's levels, so the
network learns every field of view the engine's zoom may pick.
Augmentation (MONAI): flips, small rotations, intensity scale/shift; guidance dropout so the model
also works without a seed prior. For a model that reads prompts, each sample also draws how it is
prompted (interaction_simulation.py): a line or a box from its augmented true mask, and how many
clicks the trainer simulates on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, RandFlipd, RandRotated, RandScaleIntensityd, RandShiftIntensityd

from ..core.ct_plausibility import check_ct_plausibility
from ..core.errors import InputError
from ..core.node_attributes import ATTRIBUTE_NAMES
from ..io.training_manifest import ManifestCase
from ..io.volume_reader import read_volume
from ..preprocessing.network_input import PreprocessingConfig
from ..preprocessing.patch_sampler import sample_patches, volume_tensor
from .interaction_simulation import InteractionConfig, bounding_box, jittered_line, long_axis_line, loosened_box


@dataclass
class PatchCache:
    """Cached node patches. images: (N, 1, M, M, M) float16 HU; masks uint8; labels float32
    (NaN where unknown); has_mask bool; node ids and case ids for reports; soft_labels float32
    probabilities (NaN where unknown; None when no node has one); attributes (N, K) float32 node
    attributes in node_attributes.ATTRIBUTE_NAMES order (NaN where unknown; None when no node has one);
    slice_mm (N,) float32 the coarsest spacing of each node's source CT (None: unknown, taken as
    fine as the patch); spacing_mm (N,) float32 the patch spacing each row was sampled at (None:
    every row at the preprocessing's patch_spacing_mm). A node cached at several spacings has one
    row per spacing, with the same node and case ids."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    has_mask: torch.Tensor
    node_ids: list[str]
    case_ids: list[str]
    margin: int
    soft_labels: torch.Tensor | None = None
    attributes: torch.Tensor | None = None
    slice_mm: torch.Tensor | None = None
    spacing_mm: torch.Tensor | None = None

    def spacing_or_default(self, default_mm: float) -> torch.Tensor:
        """(N,) patch spacing of each row, `default_mm` where not recorded."""
        if self.spacing_mm is None:
            return torch.full((len(self),), float(default_mm))
        return torch.nan_to_num(self.spacing_mm, nan=float(default_mm))

    def slice_or_default(self, default_mm: float) -> torch.Tensor:
        """(N,) source slice thickness, `default_mm` where a node's is unknown (a cache without
        any, or joined with one that had none)."""
        if self.slice_mm is None:
            return torch.full((len(self),), float(default_mm))
        return torch.nan_to_num(self.slice_mm, nan=float(default_mm))

    def soft_or_nan(self) -> torch.Tensor:
        """(N,) soft labels, all NaN when the cache has none."""
        if self.soft_labels is None:
            return torch.full((len(self),), float("nan"))
        return self.soft_labels

    def attributes_or_nan(self) -> torch.Tensor:
        """(N, K) attributes, all NaN when the cache has none."""
        if self.attributes is None:
            return torch.full((len(self), len(ATTRIBUTE_NAMES)), float("nan"))
        return self.attributes

    def __len__(self) -> int:
        return len(self.node_ids)

    @classmethod
    def concatenate(cls, caches) -> "PatchCache":
        """One cache from several built with the same preprocessing (e.g. by parallel workers)."""
        caches = list(caches)
        if len({c.margin for c in caches}) != 1:
            raise ValueError("caches built with different jitter margins cannot be joined")
        return cls(
            torch.cat([c.images for c in caches]), torch.cat([c.masks for c in caches]),
            torch.cat([c.labels for c in caches]), torch.cat([c.has_mask for c in caches]),
            [n for c in caches for n in c.node_ids], [n for c in caches for n in c.case_ids], caches[0].margin,
            _column_or_none(torch.cat([c.soft_or_nan() for c in caches])),
            _column_or_none(torch.cat([c.attributes_or_nan() for c in caches])),
            _column_or_none(torch.cat([c.slice_or_default(float("nan")) for c in caches])),
            _column_or_none(torch.cat([c.spacing_or_default(float("nan")) for c in caches])),
        )

    def subset(self, idx) -> "PatchCache":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return PatchCache(
            self.images[idx], self.masks[idx], self.labels[idx], self.has_mask[idx],
            [self.node_ids[i] for i in idx.tolist()], [self.case_ids[i] for i in idx.tolist()],
            self.margin, None if self.soft_labels is None else self.soft_labels[idx],
            None if self.attributes is None else self.attributes[idx],
            None if self.slice_mm is None else self.slice_mm[idx],
            None if self.spacing_mm is None else self.spacing_mm[idx],
        )


def _plain(value) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    return tensor.as_tensor() if isinstance(tensor, MetaTensor) else tensor


def _reach_vox(mask: torch.Tensor) -> float:
    """How far (voxels, along any axis, to the voxel's edge) a cached (M, M, M) mask reaches from
    the patch centre; infinite for a mask at the cached patch's border (cut: larger than it)."""
    size = mask.shape[-1]
    reach = 0.0
    for axis in range(3):
        present = torch.nonzero(mask.amax(dim=tuple(d for d in range(3) if d != axis))).flatten()
        if not len(present):
            return 0.0
        if int(present[0]) == 0 or int(present[-1]) == size - 1:
            return float("inf")
        reach = max(reach, float((present.float() - (size - 1) / 2.0).abs().max()) + 0.5)
    return reach


def _column_or_none(values: torch.Tensor) -> torch.Tensor | None:
    """None for a column (soft labels, attributes) that no node knows."""
    return None if bool(torch.isnan(values).all()) else values


def jitter_margin(pre: PreprocessingConfig, jitter_mm: float, finest_mm: float | None = None) -> int:
    """Voxels of crop room on each side: the jitter at the finest spacing cached."""
    return int(math.ceil(jitter_mm / (pre.patch_spacing_mm if finest_mm is None else finest_mm)))


def spacing_levels(low_mm: float, high_mm: float, count: int) -> tuple[float, ...]:
    """`count` patch spacings from `low_mm` to `high_mm`, evenly spaced on a log scale (so each
    level widens the field of view by the same factor), rounded to 0.01 mm."""
    if not 0 < low_mm <= high_mm:
        raise ValueError(f"spacing range [{low_mm}, {high_mm}] mm must be positive and ascending")
    if count < 1 or (count == 1 and low_mm != high_mm):
        raise ValueError("a spacing range of two different spacings needs at least two levels")
    return tuple(sorted({round(float(v), 2) for v in np.geomspace(low_mm, high_mm, count)}))


@dataclass
class CaseNodes:
    """One case's CT and nodes, from a manifest or straight from the phantom generator."""

    case_id: str
    image: np.ndarray
    geometry: object  # VolumeGeometry
    centres_ras: np.ndarray  # (N, 3) seeds
    node_ids: list[str]
    labels: list[int | None]
    mask_values: list[int | None]
    label_map: np.ndarray | None = None
    soft_labels: list[float | None] | None = None
    attributes: list[tuple[float, ...] | None] | None = None  # ATTRIBUTE_NAMES order, NaN where unknown


def manifest_case_nodes(case: ManifestCase) -> CaseNodes:
    """A manifest case read for training, its CT held to the same plausibility rules as a CT to
    predict on (a raw uint16 or MR volume would teach the network nonsense)."""
    image, geometry, metadata = read_volume(case.image)
    image = check_ct_plausibility(image, geometry, metadata.get("Modality"), case.image.name)
    label_map = None
    if case.label_map is not None:
        label_map, label_geom, _ = read_volume(case.label_map)
        if not label_geom.same_grid(geometry, tol=1e-3):
            raise InputError(f"label map {case.label_map} is not on the grid of {case.image}; resample it to the CT")
    return CaseNodes(
        case.case_id, image, geometry, np.array([n.ras for n in case.nodes], dtype=float).reshape(-1, 3),
        [n.node_id for n in case.nodes], [n.label for n in case.nodes],
        [n.mask_value if label_map is not None else None for n in case.nodes], label_map,
        [n.soft_label for n in case.nodes], [n.attributes for n in case.nodes],
    )


def build_patch_cache(cases, pre: PreprocessingConfig, jitter_mm: float = 3.0, progress=None,
                      spacings_mm=None, levels_per_node: int | None = None, seed: int = 0) -> PatchCache:
    """Cache every node of `cases` (ManifestCase or CaseNodes items, read lazily one at a time).

    spacings_mm: patch spacings to cache each node at (default: the preprocessing's one spacing).
    levels_per_node: cache each node at this many of them (default all; fewer keeps the cache
        small): always the preprocessing's patch spacing where it is one of the spacings (else
        the finest), the others drawn at random per node.
    seed: fixes which levels each node gets (with the case's position in `cases`).
    """
    levels = (pre.patch_spacing_mm,) if spacings_mm is None else tuple(sorted(float(s) for s in spacings_mm))
    if not levels or min(levels) <= 0:
        raise ValueError(f"patch spacings must be positive, got {list(levels)}")
    multi = spacings_mm is not None
    # the level every node keeps: the network's own spacing where cached, else the finest
    kept = float(pre.patch_spacing_mm) if float(pre.patch_spacing_mm) in levels else levels[0]
    margin = jitter_margin(pre, jitter_mm, min(levels))
    size = pre.patch_size + 2 * margin
    images, masks, labels, has_mask, node_ids, case_ids, soft, attributes, slices = [], [], [], [], [], [], [], [], []
    spacings = []
    unknown = (float("nan"),) * len(ATTRIBUTE_NAMES)
    # a generator is consumed one case at a time: only the patches are kept, never the CTs
    total = len(cases) if hasattr(cases, "__len__") else None
    for n, item in enumerate(cases):
        case = manifest_case_nodes(item) if isinstance(item, ManifestCase) else item
        if not case.node_ids:
            continue
        volume = volume_tensor(case.image, "cpu")
        label_tensor = None if case.label_map is None else volume_tensor(case.label_map, "cpu")
        chosen = _levels_of_nodes(levels, kept, len(case.node_ids), levels_per_node, (seed, n))
        for spacing in levels:
            rows = [k for k in range(len(case.node_ids)) if spacing in chosen[k]]
            if not rows:
                continue
            patches = sample_patches(volume, case.geometry, case.centres_ras[rows], size, spacing)
            images.append(patches.half())
            for k in rows:
                node_ids.append(case.node_ids[k])
                case_ids.append(case.case_id)
                spacings.append(spacing)
                labels.append(float("nan") if case.labels[k] is None else float(case.labels[k]))
                given = case.soft_labels[k] if case.soft_labels else None
                soft.append(float("nan") if given is None else float(given))
                read = case.attributes[k] if case.attributes else None
                attributes.append(unknown if read is None else tuple(read))
                slices.append(case.geometry.coarsest_spacing_mm)
                value = case.mask_values[k]
                if label_tensor is not None and value is not None:
                    lab = sample_patches(label_tensor, case.geometry, case.centres_ras[k : k + 1], size,
                                         spacing, mode="nearest", outside_value=0.0)
                    masks.append((lab == value).to(torch.uint8))
                    has_mask.append(True)
                else:
                    masks.append(torch.zeros(1, 1, size, size, size, dtype=torch.uint8))
                    has_mask.append(False)
        if progress:
            progress("cases", n + 1, total)
    if not node_ids:
        raise InputError("the manifest has no nodes; list nodes in each case's nodes CSV")
    return PatchCache(
        torch.cat(images), torch.cat(masks), torch.tensor(labels, dtype=torch.float32),
        torch.tensor(has_mask), node_ids, case_ids, margin, _column_or_none(torch.tensor(soft, dtype=torch.float32)),
        _column_or_none(torch.tensor(attributes, dtype=torch.float32).reshape(-1, len(ATTRIBUTE_NAMES))),
        torch.tensor(slices, dtype=torch.float32),
        torch.tensor(spacings, dtype=torch.float32) if multi else None,
    )


def _levels_of_nodes(levels, kept: float, count: int, per_node: int | None, seed) -> list[set]:
    """The spacing levels each of `count` nodes is cached at: all, or `kept` (the network's own
    spacing, the detail small nodes are seen at) and `per_node - 1` others drawn at random."""
    if per_node is None or per_node >= len(levels):
        return [set(levels)] * count
    if per_node < 1:
        raise ValueError(f"levels_per_node must be at least 1, got {per_node}")
    rng = np.random.default_rng(seed)
    others = np.asarray([v for v in levels if v != kept])
    return [{kept, *others[rng.choice(len(others), per_node - 1, replace=False)].tolist()}
            for _ in range(count)]


class NodePatchDataset(torch.utils.data.Dataset):
    """Augmented training samples from a PatchCache.

    Args:
        cache: the cached patches.
        pre: preprocessing (patch size).
        augment: False for validation (central crop, no augmentation).
        jitter_mm: maximum seed displacement (a ball, not a box).
        seed: base of the per-sample random streams (reproducible runs).
        interactions: how samples are prompted (augmenting only; None: a seed alone, always).

    With augmentation, a node cached at several spacings is one sample whose spacing is drawn
    anew at every step; without it, every cached row is a sample (each spacing is scored). A
    sample started from a line or a box is read at the finest spacing that holds its whole node,
    as the engine reads such a node.
    """

    def __init__(self, cache: PatchCache, pre: PreprocessingConfig, augment: bool,
                 jitter_mm: float = 3.0, seed: int = 0, interactions: InteractionConfig | None = None):
        self.cache, self.pre, self.augment = cache, pre, augment
        self.interactions = interactions if augment else None
        self.spacing_mm = cache.spacing_or_default(pre.patch_spacing_mm)
        self.jitter_vox = jitter_mm / self.spacing_mm  # per row: the same mm at every spacing
        self.seed = seed
        self.epoch = 0
        self.slice_mm = cache.slice_or_default(pre.patch_spacing_mm)  # unknown: as fine as the patch
        # one sample per node when augmenting across spacings (its spacing drawn per step), else
        # one per row (a cache of one spacing keeps its rows as they are, duplicate ids or not)
        self.node_rows = [[row] for row in range(len(cache))]
        if augment and cache.spacing_mm is not None:
            rows: dict[tuple[str, str], list[int]] = {}
            for row, key in enumerate(zip(cache.case_ids, cache.node_ids)):
                rows.setdefault(key, []).append(row)
            self.node_rows = list(rows.values())
        self.whole_node_row = self._whole_node_rows() if self.interactions is not None else None
        self.transforms = Compose([
            RandFlipd(["image", "mask"], prob=0.5, spatial_axis=0),
            RandFlipd(["image", "mask"], prob=0.5, spatial_axis=1),
            RandFlipd(["image", "mask"], prob=0.5, spatial_axis=2),
            RandRotated(["image", "mask"], range_x=0.2, range_y=0.2, range_z=0.2, prob=0.2,
                        mode=["bilinear", "nearest"], padding_mode="border", keep_size=True),
            RandScaleIntensityd("image", factors=0.05, prob=0.5),
            RandShiftIntensityd("image", offsets=15.0, prob=0.5),
        ])

    def _whole_node_rows(self) -> list[int]:
        """Per sample, its finest cached row whose patch holds the whole node clear of the border
        (the view a line or box gives the engine), else its coarsest row."""
        m, n = self.cache.margin, self.pre.patch_size
        limit = n / 2.0 - 2.0 - m  # voxels from the centre, after the largest crop shift
        chosen = []
        for rows in self.node_rows:
            ordered = sorted(rows, key=lambda r: float(self.spacing_mm[r]))
            fitting = [r for r in ordered if self.cache.has_mask[r] and _reach_vox(self.cache.masks[r, 0]) <= limit]
            chosen.append(fitting[0] if fitting else ordered[-1])
        return chosen

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.node_rows)

    def __getitem__(self, sample: int) -> dict:
        m, n = self.cache.margin, self.pre.patch_size
        rows = self.node_rows[sample]
        idx = rows[0]
        offset = np.zeros(3, dtype=int)
        mode, clicks = "seed", 0
        if self.augment:
            if self.interactions is not None:
                # a stream of its own, so the augmentation stays what it is without prompts
                mode, clicks = self.interactions.draw(np.random.default_rng((self.seed, self.epoch, sample, 1)))
            rng = np.random.default_rng((self.seed, self.epoch, sample))
            if len(rows) > 1:
                idx = rows[int(rng.integers(len(rows)))]
            if mode != "seed" and bool(self.cache.has_mask[self.whole_node_row[sample]]):
                idx = self.whole_node_row[sample]
            elif not bool(self.cache.has_mask[idx]):
                mode, clicks = "seed", 0  # no truth to draw a line, a box or a correction from
            offset = self._ball_offset(rng, float(self.jitter_vox[idx]))
            self.transforms.set_random_state(seed=int(rng.integers(2**31)))
        image = self.cache.images[idx].float()
        mask = self.cache.masks[idx].float()
        crop = tuple(slice(m + o, m + o + n) for o in offset)
        patch = {"image": image[(slice(None), *crop)], "mask": mask[(slice(None), *crop)]}
        if self.augment:
            patch = self.transforms(patch)
        # plain tensors: MONAI's transforms return MetaTensors, whose per-operation bookkeeping
        # would follow the batch through every layer of the network and its backward pass
        image, truth = (_plain(patch[k]) for k in ("image", "mask"))
        truth = (truth > 0.5).float()
        line, box = np.full((2, 3), np.nan, np.float32), np.full((2, 3), np.nan, np.float32)
        if mode != "seed":
            rng = np.random.default_rng((self.seed, self.epoch, sample, 2))
            node = truth[0].numpy() > 0.5
            if mode == "line" and (drawn := long_axis_line(node)) is not None:
                jitter = self.interactions.line_jitter_mm / float(self.spacing_mm[idx])
                line = jittered_line(drawn, rng, jitter).astype(np.float32)
            elif mode == "box" and (drawn := bounding_box(node)) is not None:
                box = loosened_box(drawn, rng, self.interactions.box_loosen).astype(np.float32)
        return {
            "image": image.float(),
            "mask": truth,
            "line": torch.from_numpy(line),
            "box": torch.from_numpy(box),
            "clicks": clicks,
            "label": self.cache.labels[idx],
            "has_mask": self.cache.has_mask[idx],
            "slice_mm": self.slice_mm[idx],
            "spacing_mm": self.spacing_mm[idx],
            "index": idx,
        }

    @staticmethod
    def _ball_offset(rng, r: float) -> np.ndarray:
        while True:
            o = rng.integers(-int(r), int(r) + 1, size=3)
            if (o**2).sum() <= r * r + 1e-9:
                return o
