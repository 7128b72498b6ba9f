"""Scoring the ablation's trained variants on the test manifest, and comparing each with the base.

Every variant is scored with the evaluator's machinery (engine predictions from the seeds, on the
CT grid). Test-set differences to the base come with a paired bootstrap CI, and the verdict says
"no clear difference" unless that CI excludes zero.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ...core.classification_metrics import roc_auc
from ..evaluator import score_case, summarise


def evaluate_model(folder: Path, test_cases, device: str, n_boot: int) -> tuple[dict, list]:
    """The summary of one model folder on the test cases (with speed and size), and its scores."""
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


def score_variants(records: dict, test_cases, device: str, n_boot: int, log=print) -> dict:
    """Score every trained variant (record["test"]); an alias row ("same_as") shares its source's
    figures. Returns {variant: its node scores}."""
    all_scores = {}
    for name, rec in records.items():
        if "same_as" in rec:
            continue
        summary, scores = evaluate_model(Path(rec["folder"]), test_cases, device, n_boot)
        rec["test"] = summary
        all_scores[name] = scores
        log(f"  scored {name}: AUC {summary.get('auc', float('nan')):.3f}, Dice {summary.get('dice_mean', float('nan')):.3f}")
    for name, rec in records.items():
        if "same_as" in rec:
            rec["test"] = records[rec["same_as"]]["test"]
            all_scores[name] = all_scores[rec["same_as"]]
    return all_scores


def blank_inapplicable(records: dict) -> None:
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


def compare_with_base(records: dict, all_scores: dict, n_boot: int) -> None:
    """ΔAUC to the base on the same test nodes, its paired CI and verdict, on every row with an AUC."""
    if "base" not in all_scores:
        return
    for name, rec in records.items():
        if name == "base" or not rec["test"].get("auc_applicable", True):
            continue
        y, pa, pb = _paired(all_scores[name], all_scores["base"])
        diff, ci = paired_auc_difference(y, pa, pb, n_boot)
        rec["delta_auc_vs_base"], rec["delta_auc_vs_base_ci95"] = diff, ci
        rec["verdict"] = verdict(diff, ci)


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


def reference_rows(records: dict) -> dict:
    """The size rule and the Bayes ceiling on the test manifest, from the base (or the first row)."""
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


def _paired(scores_a, scores_b):
    b = {(s.case_id, s.node_id): s.probability for s in scores_b}
    rows = [(s.label, s.probability, b[(s.case_id, s.node_id)]) for s in scores_a
            if s.label is not None and (s.case_id, s.node_id) in b]
    y, pa, pb = zip(*rows) if rows else ((), (), ())
    return np.array(y), np.array(pa), np.array(pb)
