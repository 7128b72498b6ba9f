"""The ablation: every published component trained on the same data, seeds and budget, then scored
on one test manifest with evaluation.py's machinery, in one table (markdown + JSON).

Rows: the single-task classifier and segmenter (same encoder), the base multi-task network
(M2ANet pooling + uncertainty weighting), each paper's components alone on top of the base, and a
"best" combination of the components whose *validation* AUC (from the training manifest's held-out
cases, never the test set) beat the base. Test-set differences to the base come with a paired
bootstrap CI, and the verdict says "no clear difference" unless that CI excludes zero.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ...core.classification_metrics import roc_auc
from ...core.errors import ModelError
from ...io.training_manifest import read_manifest
from ...network.model_store import load_model
from ...preprocessing.network_input import PreprocessingConfig
from ...training.node_patch_dataset import PatchCache, build_patch_cache
from ...training.trainer import TrainConfig, Trainer, seed_everything
from ..evaluator import score_case, summarise, summary_json


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


# --- configuration --------------------------------------------------------------------------------
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
    d = asdict(base)
    d["network"] = _merge(d["network"], variant.network)
    d = _merge(d, {k: v for k, v in variant.train.items() if k != "distillation"})
    if "distillation" in variant.train and teacher_dirs:
        d["distillation"] = {**variant.train["distillation"], "teachers": [str(p) for p in teacher_dirs]}
    d["model_id"] = f"ablation-{variant.name}"
    return TrainConfig(**d)


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


# --- metrics --------------------------------------------------------------------------------------
def paired_auc_difference(labels, p_a, p_b, n_boot: int = 1000, seed: int = 0) -> tuple[float, tuple]:
    """AUC(p_a) - AUC(p_b) on the same nodes, with a paired bootstrap 95% CI."""
    y, a, b = np.asarray(labels), np.asarray(p_a), np.asarray(p_b)
    diff = roc_auc(y, a) - roc_auc(y, b)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        d = roc_auc(y[idx], a[idx]) - roc_auc(y[idx], b[idx])
        if not math.isnan(d):
            values.append(d)
    if not values:
        return diff, (float("nan"), float("nan"))
    return diff, (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5)))


def verdict(diff: float, ci) -> str:
    if any(math.isnan(v) for v in (diff, *ci)):
        return "n/a"
    if ci[0] > 0:
        return "helps"
    if ci[1] < 0:
        return "hurts"
    return "no clear difference"


def evaluate_model(folder: Path, test_cases, device: str, n_boot: int) -> tuple[dict, list]:
    from ...inference.engine import NodeEngine

    engine = NodeEngine(folder, device)
    scores = []
    for case in test_cases:
        scores.extend(score_case(engine, case))
    summary = summarise(scores, engine.config.metastasis_threshold, n_boot)
    n = max(len(scores), 1)
    summary["forward_ms_per_node"] = 1000.0 * engine.timings.get("forward", 0.0) / n
    predict_s = sum(v for k, v in engine.timings.items() if k != "load_model")
    summary["predict_ms_per_node"] = 1000.0 * predict_s / n
    summary["parameters"] = int(sum(p.numel() for p in engine.network.parameters()))
    return summary, scores


# --- the run --------------------------------------------------------------------------------------
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
    models_dir = out_dir / "models"
    base = base or TrainConfig()
    unknown = [v for v in variants if v not in VARIANT_NAMES]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {', '.join(VARIANT_NAMES)}")
    order = [v for v in VARIANT_NAMES if v in variants]  # teachers (baselines) before students
    pre = PreprocessingConfig.from_dict(base.preprocessing)
    cache = build_patch_cache(read_manifest(train_manifest), pre, base.jitter_mm)
    cache = hide_annotations(cache, mask_fraction, label_fraction, base.seed)
    test_cases = read_manifest(test_manifest)
    log(f"ablation: {len(cache)} training nodes, {sum(len(c.nodes) for c in test_cases)} test nodes, "
        f"variants {', '.join(order)}")

    records: dict[str, dict] = {}
    notes: list[str] = []

    def train(variant: Variant) -> None:
        teacher_dirs = [models_dir / t for t in variant.teachers if t in records]
        missing = [t for t in variant.teachers if t not in records]
        if missing and "distillation" in variant.train:
            notes.append(f"{variant.name}: teachers {', '.join(missing)} not in this run; distilled from "
                         f"{', '.join(t for t in variant.teachers if t in records) or 'none (no distillation)'}")
        config = variant_config(base, variant, teacher_dirs)
        folder = models_dir / variant.name
        record = {
            "name": variant.name, "title": variant.title, "paper": variant.paper,
            "network": variant.network, "training_components": config_components(config),
            "teachers": [p.name for p in teacher_dirs], "folder": str(folder),
        }
        earlier = finished_variant(folder, config) if resume else None
        if earlier is not None:
            records[variant.name] = {**record, **earlier, "reused": True}
            log(f"  reused {variant.name} from {folder}: {earlier['epochs']} epochs, validation AUC "
                f"{earlier['validation'].get('val_auc', float('nan')):.3f}")
            return
        seed_everything(config.seed)
        t0 = time.perf_counter()
        trainer = Trainer(config, folder, log=lambda *_: None)
        trainer.set_cache(cache)
        trainer.fit()
        validation = trainer.finish()
        (folder / "checkpoint.pt").unlink(missing_ok=True)
        records[variant.name] = {**record, "epochs": len(trainer.history),
                                 "train_minutes": (time.perf_counter() - t0) / 60, "validation": validation}
        log(f"  trained {variant.name}: {len(trainer.history)} epochs in {records[variant.name]['train_minutes']:.2f} "
            f"min, validation AUC {validation.get('val_auc', float('nan')):.3f}")

    for name in order:
        if name == BEST:
            continue
        train(VARIANTS[name])
    if BEST in order:
        best = choose_best(records)
        if best is None:
            notes.append("best combination: no component variant beat the base on validation AUC; none trained")
        elif len(best) == 1:
            notes.append(f"best combination: only {best[0]} beat the base on validation AUC; its row is the best")
            records[BEST] = {**records[best[0]], "name": BEST,
                             "title": f"Best combination = {VARIANTS[best[0]].paper} alone", "same_as": best[0]}
        else:
            train(combine_variants(best))

    # scoring on the test manifest
    all_scores = {}
    for name, rec in records.items():
        if "same_as" in rec:
            continue
        summary, scores = evaluate_model(Path(rec["folder"]), test_cases, base.device, n_boot)
        rec["test"] = summary
        all_scores[name] = scores
        log(f"  scored {name}: AUC {summary.get('auc', float('nan')):.3f}, Dice {summary.get('dice_mean', float('nan')):.3f}")
    for name, rec in records.items():
        if "same_as" in rec:
            rec["test"] = records[rec["same_as"]]["test"]
            all_scores[name] = all_scores[rec["same_as"]]
    _blank_inapplicable(records)
    if "base" in all_scores:
        for name, rec in records.items():
            if name == "base" or not rec["test"].get("auc_applicable", True):
                continue
            y, pa, pb = _paired(all_scores[name], all_scores["base"])
            diff, ci = paired_auc_difference(y, pa, pb, n_boot)
            rec["delta_auc_vs_base"], rec["delta_auc_vs_base_ci95"] = diff, ci
            rec["verdict"] = verdict(diff, ci)

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
        "baselines": _baselines(records),
        "notes": notes,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ablation.json").write_text(summary_json(result))
    (out_dir / "ablation.md").write_text(ablation_markdown(result))
    log(f"ablation table: {out_dir / 'ablation.md'}")
    return result


# what the trainer adds to the saved training config after the run, and settings that change
# only how fast it runs (a variant trained with other data-loader workers is the same variant)
_RUN_OUTCOME_KEYS = ("history", "validation", "world_size", "num_workers", "initial_weights")


def finished_variant(folder: Path, config: TrainConfig) -> dict | None:
    """{"epochs", "train_minutes", "validation"} of a model folder trained with exactly `config`
    (its saved training config, less the run's outcome), else None."""
    try:
        saved = load_model(folder).config.training
    except ModelError:
        return None
    wanted = json.loads(json.dumps(asdict(config)))  # tuples -> lists, as in config.json
    keys = (set(saved) | set(wanted)) - set(_RUN_OUTCOME_KEYS)
    # an option known to only one of the two versions matches where it is off (0, None, empty)
    if any(saved[k] != wanted[k] if k in saved and k in wanted else bool(saved.get(k) or wanted.get(k))
           for k in keys):
        return None
    history = saved.get("history") or []
    return {"epochs": len(history), "train_minutes": history[-1]["minutes"] if history else float("nan"),
            "validation": saved.get("validation") or {}}


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


def _paired(scores_a, scores_b):
    b = {(s.case_id, s.node_id): s.probability for s in scores_b}
    rows = [(s.label, s.probability, b[(s.case_id, s.node_id)]) for s in scores_a
            if s.label is not None and (s.case_id, s.node_id) in b]
    y, pa, pb = zip(*rows) if rows else ((), (), ())
    return np.array(y), np.array(pa), np.array(pb)


def _blank_inapplicable(records: dict) -> None:
    """A segmenter has no metastasis output; a classifier without a mask branch has no mask."""
    for rec in records.values():
        tasks = rec["network"].get("tasks")
        test = rec["test"]
        test["auc_applicable"] = not tasks or "classification" in tasks
        test["dice_applicable"] = not tasks or "segmentation" in tasks
        if not test["auc_applicable"]:
            for k in ("auc", "auc_ci95", "accuracy", "accuracy_ci95", "sensitivity", "sensitivity_ci95",
                      "specificity", "specificity_ci95", "ece"):
                test.pop(k, None)
        if not test["dice_applicable"]:
            for k in ("dice_mean", "dice_median", "dice_ci95", "hd95_mm_median"):
                test.pop(k, None)


def _baselines(records: dict) -> dict:
    ref = records.get("base") or next(iter(records.values()), None)
    if ref is None:
        return {}
    test = ref["test"]
    out = {}
    for key in ("short_axis_rule_true_mask", "short_axis_rule_predicted_mask"):
        if key in test:
            out[key] = test[key]
    if "bayes_ceiling_auc" in test:
        out["bayes_ceiling_auc"] = test["bayes_ceiling_auc"]
    out["from_variant"] = ref["name"]
    return out


# --- the table ------------------------------------------------------------------------------------
def _fmt(value, ci=None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.{digits}f}"
    if ci is not None and not any(c is None or math.isnan(c) for c in ci):
        text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return text


def ablation_markdown(result: dict) -> str:
    budget = result["budget_minutes_per_variant"]
    lines = [
        "# Ablation: the five papers' components on the same data, seeds and budget",
        "",
        f"Command: `{result['command']}`",
        "",
        f"- Budget per variant: {'%g min' % budget if budget else 'no time limit'}, at most "
        f"{result['max_epochs']} epochs (early stopping on the validation loss); device {result['device']}, "
        f"{result['torch_threads']} torch threads; total {result['total_minutes']:.1f} min; {result['date']}.",
        f"- Training: {result['train_manifest']} ({result['training_nodes']} nodes, "
        f"{result['training_nodes_with_mask']} with a mask, {result['training_nodes_with_label']} with a label). "
        f"Test: {result['test_manifest']} ({result['test_nodes']} nodes).",
        "- Metrics from evaluation.py on the test manifest (engine predictions from the seeds, CT grid): "
        "95% bootstrap CIs over nodes; Dice per node with a mask; ECE with 10 bins; ms/node = network "
        "forward time per node (engine timings); ΔAUC = paired bootstrap difference to the base.",
        "- Verdict: \"helps\"/\"hurts\" only when the paired 95% CI of ΔAUC excludes 0.",
        "",
        "| Variant | AUC | Accuracy | Sensitivity | Specificity | Dice | ECE | Params | ms/node | ΔAUC vs base | Verdict | Epochs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rec in result["variants"]:
        t = rec["test"]
        delta = _fmt(rec.get("delta_auc_vs_base"), rec.get("delta_auc_vs_base_ci95")) if "delta_auc_vs_base" in rec else "—"
        lines.append(
            f"| {rec['title']} (`{rec['name']}`) | {_fmt(t.get('auc'), t.get('auc_ci95'))} | "
            f"{_fmt(t.get('accuracy'), t.get('accuracy_ci95'))} | {_fmt(t.get('sensitivity'), t.get('sensitivity_ci95'))} | "
            f"{_fmt(t.get('specificity'), t.get('specificity_ci95'))} | {_fmt(t.get('dice_mean'), t.get('dice_ci95'))} | "
            f"{_fmt(t.get('ece'))} | {t.get('parameters', 0):,} | {_fmt(t.get('forward_ms_per_node'), digits=1)} | "
            f"{delta} | {rec.get('verdict', '—')} | {rec['epochs']} |"
        )
    b = result["baselines"]
    if b:
        lines += ["", "Reference rows (test manifest):", ""]
        for key, label in (("short_axis_rule_true_mask", "Short axis ≥ 10 mm on the true mask"),
                           ("short_axis_rule_predicted_mask", f"Short axis ≥ 10 mm on the `{b['from_variant']}` mask")):
            if key in b:
                r = b[key]
                lines.append(f"- {label}: accuracy {_fmt(r.get('accuracy'))}, sensitivity {_fmt(r.get('sensitivity'))}, "
                             f"specificity {_fmt(r.get('specificity'))}, AUC of the short axis {_fmt(r.get('auc_of_short_axis'))}")
        if "bayes_ceiling_auc" in b:
            lines.append(f"- Bayes ceiling (phantom truth probabilities): AUC {_fmt(b['bayes_ceiling_auc'])}")
    if result["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    lines += ["", "Validation AUC (training manifest's held-out cases; chooses the best combination): "
              + ", ".join(f"`{r['name']}` {_fmt(r['validation'].get('val_auc'))}" for r in result["variants"]), ""]
    return "\n".join(lines)


def load_result(path) -> dict:
    return json.loads(Path(path).read_text())
