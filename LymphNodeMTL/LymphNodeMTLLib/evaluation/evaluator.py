"""`lymphnode-mtl evaluate`: a model run end to end on a manifest, scored per node.

Everything is measured the way a radiologist would meet it: the engine predicts from the seeds in
the manifest on the CT grid; masks are compared with the label map on that grid.
Report: AUC, accuracy, sensitivity, specificity (bootstrap 95% CIs), Dice, HD95, expected
calibration error, the short-axis >= 10 mm rule on predicted and on true masks, and, on phantoms
(truth.csv beside nodes.csv), the Bayes ceiling: the AUC of the true probability P. The same figures
are also given per slice-thickness stratum of the source CT: thick slices hide the small signs
(a necrotic core, a fatty hilum) by partial volume, so a pooled AUC alone would not tell a hospital
how the model does on its own protocol.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

from ..core.case import Case, Seed
from ..core.classification_metrics import expected_calibration_error, roc_auc
from ..core.measurements import measure_node
from ..core.node_result import NodeResult
from ..io.training_manifest import read_manifest
from ..io.volume_reader import read_volume

SHORT_AXIS_RULE_MM = 10.0
# Upper bounds (mm) of the slice-thickness strata; the last stratum is open-ended. Thin-slice CT
# is <= 1.5 mm; 3 mm and more is the thick end of routine protocols.
SLICE_STRATA_MM = (1.5, 3.0)


@dataclass
class NodeScore:
    case_id: str
    node_id: str
    label: int | None
    probability: float
    short_axis_mm: float
    true_short_axis_mm: float = float("nan")
    dice: float = float("nan")
    hd95_mm: float = float("nan")
    true_probability: float = float("nan")
    slice_mm: float = float("nan")  # the source CT's coarsest voxel spacing (its slice spacing)
    extra: dict = field(default_factory=dict)


# --- metrics with hand-checkable definitions ------------------------------------------------------
def binary_metrics(labels, predicted) -> dict:
    labels = np.asarray(labels, dtype=int)
    predicted = np.asarray(predicted, dtype=int)
    tp = int(((predicted == 1) & (labels == 1)).sum())
    tn = int(((predicted == 0) & (labels == 0)).sum())
    fp = int(((predicted == 1) & (labels == 0)).sum())
    fn = int(((predicted == 0) & (labels == 1)).sum())
    nan = float("nan")
    return {
        "accuracy": (tp + tn) / len(labels) if len(labels) else nan,
        "sensitivity": tp / (tp + fn) if tp + fn else nan,
        "specificity": tn / (tn + fp) if tn + fp else nan,
    }


def bootstrap_ci(statistic, labels, scores, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% CI of statistic(labels, scores) over nodes resampled with replacement."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(labels), len(labels))
        v = statistic(labels[idx], scores[idx])
        if not math.isnan(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def dice_score(a: np.ndarray, b: np.ndarray) -> float:
    denom = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / denom) if denom else 1.0


def hd95_mm(a: np.ndarray, b: np.ndarray, spacing_kji) -> float:
    """95th-percentile symmetric surface distance (MONAI), in mm on the CT grid."""
    if not a.any() or not b.any():
        return float("nan")
    pred = torch.from_numpy(a)[None, None]
    gt = torch.from_numpy(b)[None, None]
    d = compute_hausdorff_distance(pred, gt, percentile=95, spacing=[float(s) for s in spacing_kji])
    return float(d.item())


def summarise(scores: list[NodeScore], threshold: float = 0.5, n_boot: int = 1000) -> dict:
    labelled = [s for s in scores if s.label is not None]
    y = np.array([s.label for s in labelled])
    p = np.array([s.probability for s in labelled])
    out: dict = {"nodes": len(scores), "labelled_nodes": len(labelled)}
    if len(labelled):
        out["prevalence"] = float(y.mean())
        out["auc"] = roc_auc(y, p)
        out["auc_ci95"] = bootstrap_ci(roc_auc, y, p, n_boot)
        for name in ("accuracy", "sensitivity", "specificity"):
            stat = lambda yy, pp, name=name: binary_metrics(yy, pp >= threshold)[name]  # noqa: E731
            out[name] = stat(y, p)
            out[f"{name}_ci95"] = bootstrap_ci(stat, y, p, n_boot)
        out["ece"] = expected_calibration_error(y, p)
        for source, attr in (("predicted_mask", "short_axis_mm"), ("true_mask", "true_short_axis_mm")):
            size = np.array([getattr(s, attr) for s in labelled])
            if np.isnan(size).all():
                continue
            rule = binary_metrics(y, size >= SHORT_AXIS_RULE_MM)
            rule["auc_of_short_axis"] = roc_auc(y, np.nan_to_num(size))
            out[f"short_axis_rule_{source}"] = rule
        true_p = np.array([s.true_probability for s in labelled])
        if not np.isnan(true_p).any():
            out["bayes_ceiling_auc"] = roc_auc(y, true_p)
    dice = np.array([s.dice for s in scores if not math.isnan(s.dice)])
    if len(dice):
        hd = np.array([s.hd95_mm for s in scores if not math.isnan(s.hd95_mm)])
        out["dice_mean"] = float(dice.mean())
        out["dice_median"] = float(np.median(dice))
        out["dice_ci95"] = bootstrap_ci(lambda d, _: float(np.mean(d)), dice, dice, n_boot)
        out["hd95_mm_median"] = float(np.median(hd)) if len(hd) else float("nan")
    return out


def slice_stratum(slice_mm: float) -> str:
    """Name of the slice-thickness stratum of a CT whose coarsest spacing is `slice_mm`."""
    lower = 0.0
    for upper in SLICE_STRATA_MM:
        if slice_mm <= upper:
            return f"slices {lower:g}-{upper:g} mm"
        lower = upper
    return f"slices > {lower:g} mm"


def summarise_by_slice_thickness(scores: list[NodeScore], threshold: float = 0.5, n_boot: int = 1000) -> dict:
    """summarise() within each slice-thickness stratum that holds nodes, in ascending order."""
    groups: dict[str, list[NodeScore]] = {}
    for score in sorted(scores, key=lambda s: s.slice_mm):
        if not math.isnan(score.slice_mm):
            groups.setdefault(slice_stratum(score.slice_mm), []).append(score)
    return {name: summarise(group, threshold, n_boot) for name, group in groups.items()}


# --- running a model on a manifest ----------------------------------------------------------------
def _truth_probabilities(nodes_csv: Path) -> dict:
    truth = nodes_csv.parent / "truth.csv"
    if not truth.is_file():
        return {}
    with open(truth, newline="") as f:
        return {row["id"]: float(row["probability"]) for row in csv.DictReader(f)}


def _true_node(node_id, seed, mask_full: np.ndarray) -> NodeResult:
    idx = np.argwhere(mask_full)
    start, stop = idx.min(0), idx.max(0) + 1
    sub = mask_full[tuple(slice(a, b) for a, b in zip(start, stop))]
    return NodeResult(node_id, seed, tuple(int(v) for v in start), tuple(int(v) for v in stop), sub)


def score_case(engine, manifest_case) -> list[NodeScore]:
    image, geometry, _ = read_volume(manifest_case.image)
    seeds = [Seed(n.node_id, n.ras) for n in manifest_case.nodes]
    results = engine.predict(Case(image, geometry, seeds))
    label_map = read_volume(manifest_case.label_map)[0] if manifest_case.label_map else None
    truth_p = _truth_probabilities(manifest_case.nodes_csv) if manifest_case.nodes_csv else {}
    scores = []
    for node, result in zip(manifest_case.nodes, results):
        # a node without a usable mask shows no probability; the metrics score what the network said
        probability = result.extra.get("network_probability", result.probability)
        score = NodeScore(manifest_case.case_id, node.node_id, node.label, probability,
                          result.short_axis_mm, true_probability=truth_p.get(node.node_id, float("nan")),
                          slice_mm=float(max(geometry.spacing)))
        if label_map is not None and node.mask_value is not None:
            truth = label_map == node.mask_value
            if truth.any():
                predicted = result.full_mask(geometry.shape_kji)
                score.dice = dice_score(predicted, truth)
                lo = np.minimum(np.argwhere(truth).min(0), np.asarray(result.bbox_start_kji)) - 2
                hi = np.maximum(np.argwhere(truth).max(0) + 1, np.asarray(result.bbox_stop_kji)) + 2
                box = tuple(slice(max(int(a), 0), int(b)) for a, b in zip(lo, hi))
                score.hd95_mm = hd95_mm(predicted[box], truth[box], geometry.spacing[::-1])
                true_node = _true_node(node.node_id, node.ras, truth)
                measure_node(true_node, image, geometry)
                score.true_short_axis_mm = true_node.short_axis_mm
        scores.append(score)
    return scores


def evaluate_manifest(engine, manifest, out_dir, progress=None, n_boot: int = 1000) -> dict:
    cases = read_manifest(manifest)
    scores: list[NodeScore] = []
    for n, case in enumerate(cases):
        scores.extend(score_case(engine, case))
        if progress:
            progress("cases", n + 1, len(cases))
    summary = summarise(scores, engine.config.metastasis_threshold, n_boot)
    summary["by_slice_thickness"] = summarise_by_slice_thickness(scores, engine.config.metastasis_threshold, n_boot)
    summary["model_id"] = engine.model_id
    summary["weights_sha256"] = engine.model.weights_sha256
    summary["manifest"] = str(manifest)
    from .report import write_report  # matplotlib only when a report is written

    write_report(Path(out_dir), scores, summary)
    return summary


def write_predictions_csv(path: Path, scores: list[NodeScore]) -> None:
    columns = ["case_id", "node_id", "label", "probability", "short_axis_mm", "true_short_axis_mm",
               "dice", "hd95_mm", "true_probability", "slice_mm"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for s in scores:
            w.writerow([s.case_id, s.node_id, "" if s.label is None else s.label, f"{s.probability:.4f}",
                        f"{s.short_axis_mm:.2f}", f"{s.true_short_axis_mm:.2f}", f"{s.dice:.4f}",
                        f"{s.hd95_mm:.2f}", f"{s.true_probability:.4f}", f"{s.slice_mm:.2f}"])


def summary_json(summary: dict) -> str:
    def clean(v):
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, (tuple, list)):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    return json.dumps(clean(summary), indent=2) + "\n"
