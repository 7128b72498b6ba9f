"""The ablation's rows: what each variant switches on, in the network and in the training config.

Rows: the single-task classifier and segmenter (same encoder), the base multi-task network
(M2ANet pooling + uncertainty weighting), each paper's components alone on top of the base
(docs/methods.md), and "best": the components whose validation AUC beat the base, together.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...training.trainer import TrainConfig


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: what it switches on, in the network and in the training config."""

    name: str
    title: str
    paper: str
    network: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    teachers: tuple = ()  # variants whose model folders distil into this one


VARIANTS = {
    v.name: v
    for v in (
        Variant("single_task_classifier", "Single-task classifier (no mask branch, pools under a seed ball)",
                "baseline", {"tasks": ["classification"]}),
        Variant("single_task_segmenter", "Single-task segmenter (no metastasis head)", "baseline",
                {"tasks": ["segmentation"]}),
        Variant("base", "Base multi-task: M2ANet soft-mask pooling + uncertainty weighting", "M2ANet"),
        Variant("ma_mtln", "+ MA-MTLN: multi-scale fusion, visual/spatial attention, task-aware attention, "
                "deep supervision, Jaccard+focal loss", "MA-MTLN",
                {"fusion": "ma_mtln", "deep_supervision": True, "task_aware_attention": True},
                {"loss": {"segmentation": "jaccard_focal"}}),
        Variant("mt_ids", "+ MT-IDS: routing gate, gradient balancer, auxiliary short axis", "MT-IDS",
                {"routing_gate": {"shared_experts": 2, "task_experts": 1}, "aux_short_axis": True},
                {"gradient_balancer": {"momentum": 0.9}}),
        Variant("sd_mdanet", "+ SD-MdaNet: dense attention encoder, task-specific attention, mixed head, "
                "distillation from the base and single-task teachers", "SD-MdaNet",
                {"encoder": "dense_attention", "task_specific_attention": True, "mixed_head": True},
                {"loss": {"mixed_lambda": 0.1}, "distillation": {"beta": 0.5, "temperature": 2.0}},
                teachers=("base", "single_task_classifier")),
        Variant("la_net", "+ LA-Net: lesion-attention head, two-stage pseudo-masks", "LA-Net",
                {"head": "lesion_attention"},
                {"pseudo_masks": {"threshold": 0.8, "weight": 0.1, "stage1_epochs": 1}}),
    )
}
COMPONENT_VARIANTS = ("ma_mtln", "mt_ids", "sd_mdanet", "la_net")
BEST = "best"
DEFAULT_VARIANTS = ("single_task_classifier", "single_task_segmenter", "base", *COMPONENT_VARIANTS, BEST)
VARIANT_NAMES = (*VARIANTS, BEST)


def _merge(a: dict, b: dict) -> dict:
    """Recursive dict merge (b wins); lists and scalars are replaced."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else copy.deepcopy(v)
    return out


def combine_variants(names) -> Variant:
    """One variant with every named component switched on."""
    network, train, teachers = {}, {}, ()
    for name in names:
        v = VARIANTS[name]
        network, train = _merge(network, v.network), _merge(train, v.train)
        teachers += tuple(t for t in v.teachers if t not in teachers)
    return Variant(BEST, "Best combination: " + " + ".join(VARIANTS[n].paper for n in names), "combination",
                   network, train, teachers)


def variant_config(base: TrainConfig, variant: Variant, teacher_dirs: list[Path]) -> TrainConfig:
    """The base training config with the variant's components switched on (and its teachers)."""
    d = asdict(base)
    d["network"] = _merge(d["network"], variant.network)
    d = _merge(d, {k: v for k, v in variant.train.items() if k != "distillation"})
    if "distillation" in variant.train and teacher_dirs:
        d["distillation"] = {**variant.train["distillation"], "teachers": [str(p) for p in teacher_dirs]}
    d["model_id"] = f"ablation-{variant.name}"
    return TrainConfig(**d)


def config_components(config: TrainConfig) -> dict:
    """The training-config components in use (for the table's provenance)."""
    out = {}
    for key in ("loss", "gradient_balancer", "pseudo_masks"):
        value = getattr(config, key)
        if value:
            out[key] = value
    if config.distillation:
        out["distillation"] = {k: (v if k != "teachers" else [Path(t).name for t in v])
                               for k, v in config.distillation.items()}
    return out


def choose_best(records: dict) -> list[str] | None:
    """Component variants whose validation AUC beat the base's (validation split, not the test set)."""
    if "base" not in records:
        return None
    base_auc = records["base"]["validation"].get("val_auc", float("nan"))
    better = []
    for name in COMPONENT_VARIANTS:
        auc = records.get(name, {}).get("validation", {}).get("val_auc", float("nan"))
        if not math.isnan(auc) and not math.isnan(base_auc) and auc > base_auc:
            better.append(name)
    return better or None
