"""The ablation run: every published component trained on the same data, seeds and budget, then
scored on one test manifest, in one table (ablation.md + ablation.json).

The steps, each in its own file: the rows (variants.py), training them on one cache of training
nodes (variant_training.py), scoring them and comparing each with the base (scoring.py), and the
table (table.py). The "best" row combines the components whose *validation* AUC (from the training
manifest's held-out cases, never the test set) beat the base.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ...io.training_manifest import read_manifest
from ...preprocessing.network_input import PreprocessingConfig
from ...training.node_patch_dataset import PatchCache, build_patch_cache
from ...training.trainer import TrainConfig
from ..node_scores import summary_json
from .scoring import blank_inapplicable, compare_with_base, reference_rows, score_variants
from .table import ablation_markdown
from .variant_training import VariantTraining
from .variants import (
    BEST,
    COMPONENT_VARIANTS,
    DEFAULT_VARIANTS,
    VARIANT_NAMES,
    VARIANTS,
    combine_variants,
    variant_config,
)

# the run, and the rows as the ablate command and the component tests import them from here
__all__ = ["COMPONENT_VARIANTS", "DEFAULT_VARIANTS", "VARIANT_NAMES", "VARIANTS", "combine_variants",
           "hide_annotations", "run_ablation", "variant_config"]


def run_ablation(
    train_manifest,
    test_manifest,
    out_dir,
    *,
    base: TrainConfig | None = None,
    variants=DEFAULT_VARIANTS,
    n_boot: int = 1000,
    mask_fraction: float = 1.0,
    label_fraction: float = 1.0,
    command: str = "",
    resume: bool = False,
    log=print,
) -> dict:
    """Train and score `variants` (names from VARIANT_NAMES); write ablation.md/.json into out_dir.

    resume: reuse a variant's model folder left in out_dir/models by an earlier (perhaps cut off)
    run when it was trained with exactly this variant's training config; otherwise train it.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    base = base or TrainConfig()
    order = run_order(variants)
    cache = training_nodes(train_manifest, base, mask_fraction, label_fraction)
    test_cases = read_manifest(test_manifest)
    log(f"ablation: {len(cache)} training nodes, {sum(len(c.nodes) for c in test_cases)} test nodes, "
        f"variants {', '.join(order)}")

    training = VariantTraining(base, cache, out_dir / "models", resume, log)
    for name in order:
        if name != BEST:
            training.train(VARIANTS[name])
    if BEST in order:
        training.train_best()

    records = training.records
    all_scores = score_variants(records, test_cases, base.device, n_boot, log)
    blank_inapplicable(records)
    compare_with_base(records, all_scores, n_boot)

    result = {
        "command": command,
        "budget_minutes_per_variant": base.max_minutes,
        "max_epochs": base.epochs,
        "train_manifest": str(train_manifest), "test_manifest": str(test_manifest),
        "training_nodes": len(cache), "training_nodes_with_mask": int(cache.has_mask.sum()),
        "training_nodes_with_label": int((~torch.isnan(cache.labels)).sum()),
        "test_nodes": sum(len(c.nodes) for c in test_cases),
        "mask_fraction": mask_fraction, "label_fraction": label_fraction,
        "base_config": {k: v for k, v in asdict(base).items() if k not in ("model_id",)},
        "device": str(base.device), "torch_threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "total_minutes": (time.perf_counter() - t_start) / 60,
        "variants": [records[n] for n in order if n in records],
        "baselines": reference_rows(records),
        "notes": training.notes,
    }
    write_ablation(out_dir, result, log)
    return result


def run_order(variants) -> list[str]:
    """The asked variants in table order, which trains teachers (the baselines) before students."""
    unknown = [v for v in variants if v not in VARIANT_NAMES]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {', '.join(VARIANT_NAMES)}")
    return [v for v in VARIANT_NAMES if v in variants]


def training_nodes(train_manifest, base: TrainConfig, mask_fraction: float, label_fraction: float) -> PatchCache:
    """The training manifest's nodes, cached once for every variant, with the asked share of masks
    and labels kept."""
    pre = PreprocessingConfig.from_dict(base.preprocessing)
    cache = build_patch_cache(read_manifest(train_manifest), pre, base.jitter_mm)
    return hide_annotations(cache, mask_fraction, label_fraction, base.seed)


def hide_annotations(cache: PatchCache, mask_fraction: float, label_fraction: float, seed: int) -> PatchCache:
    """Keep true masks on `mask_fraction` and labels on `label_fraction` of the nodes (drawn
    reproducibly), to test the semi-supervised parts; the same nodes for every variant."""
    cache = copy.copy(cache)
    rng = np.random.default_rng(seed + 7919)
    n = len(cache)
    if mask_fraction < 1.0:
        keep = torch.from_numpy(rng.random(n) < mask_fraction)
        cache.has_mask = cache.has_mask & keep
    if label_fraction < 1.0:
        keep = torch.from_numpy(rng.random(n) < label_fraction)
        cache.labels = torch.where(keep, cache.labels, torch.full_like(cache.labels, float("nan")))
        if cache.soft_labels is not None:  # a hidden label hides its probability too
            cache.soft_labels = torch.where(keep, cache.soft_labels, torch.full_like(cache.soft_labels, float("nan")))
    return cache


def write_ablation(out_dir: Path, result: dict, log=print) -> None:
    """ablation.json and ablation.md, each written beside itself and renamed over the old one, so a
    reader never sees half a table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("ablation.json", summary_json(result)), ("ablation.md", ablation_markdown(result))):
        temporary = out_dir / f".{name}.tmp"
        try:
            temporary.write_text(text)
            os.replace(temporary, out_dir / name)
        finally:
            temporary.unlink(missing_ok=True)
    log(f"ablation table: {out_dir / 'ablation.md'}")
