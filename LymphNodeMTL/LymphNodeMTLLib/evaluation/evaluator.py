"""`lymphnode-mtl evaluate`: a model run end to end on a manifest, scored per node.

Everything is measured the way a radiologist would meet it: the engine predicts from the seeds in
the manifest on the CT grid; masks are compared with the label map on that grid.
Report: AUC, accuracy, sensitivity, specificity (bootstrap 95% CIs), Dice, HD95, expected
calibration error, the short-axis >= 10 mm rule on predicted and on true masks, and, on phantoms
(truth.csv beside nodes.csv), the Bayes ceiling: the AUC of the true probability P. The same figures
are also given per slice-thickness stratum of the source CT: thick slices hide the small signs
(a necrotic core, a fatty hilum) by partial volume, so a pooled AUC alone would not tell a hospital
how the model does on its own protocol. Likewise per size stratum (true short axis) and per contact
stratum: the share of the node's surroundings (a band 1.5-3 mm out) that is tissue of similar attenuation (an organ,
muscle, bowel, an unenhanced vessel, another node), where no fat margin shows the node's edge.
A manifest without labels (real lesions with masks only) is scored for its masks: Dice, HD95 and
the count of empty masks; AUC and calibration need labels and are left out.
With `interactive_clicks` K > 0, every node with a true mask is also scored interactively
(interactive_scoring.py): Dice after 0..K simulated clicks, NoC@85/90, and the Dice of its
long-axis line alone and of its box alone, overall and in every stratum.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..core.case import Case, Seed
from ..core.classification_metrics import expected_calibration_error, roc_auc
from ..core.measurements import measure_node
from ..core.node_result import NodeResult
from ..core.node_status import has_usable_mask
from ..io.training_manifest import check_same_grid, read_manifest
from ..io.volume_reader import read_volume
from .interactive_scoring import score_interactively, summarise_interactive
from ..core.mask_dice import dice_score
from .mask_overlap import hd95_mm
from .node_scores import SHORT_AXIS_RULE_MM, NodeScore

# Upper bounds (mm) of the slice-thickness strata; the last stratum is open-ended. Thin-slice CT
# is <= 1.5 mm; 3 mm and more is the thick end of routine protocols.
SLICE_STRATA_MM = (1.5, 3.0)
# Upper bounds of the size strata (true short axis, mm) and of the contact strata (share of the
# node's outer surface on similar-attenuation tissue); the last stratum of each is open-ended.
SIZE_STRATA_MM = (10.0, 20.0, 30.0)
CONTACT_STRATA = (0.1, 0.3)
SIMILAR_ATTENUATION_HU = (0.0, 150.0)  # soft tissue and enhancing organs, not fat, not bone
CONTACT_BAND_MM = (1.5, 3.0)  # where around the node the contact is read


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
    out["empty_masks"] = int(sum(s.empty_mask for s in scores))
    interactive = summarise_interactive([s.interactive for s in scores if s.interactive is not None])
    if interactive:
        out["interactive"] = interactive
    dice = np.array([s.dice for s in scores if not math.isnan(s.dice)])
    if len(dice):
        hd = np.array([s.hd95_mm for s in scores if not math.isnan(s.hd95_mm)])
        out["dice_mean"] = float(dice.mean())
        out["dice_median"] = float(np.median(dice))
        out["dice_p10"] = float(np.percentile(dice, 10))
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
    return _summarise_by(scores, "slice_mm", slice_stratum, threshold, n_boot)


def size_stratum(short_axis_mm: float) -> str:
    """Name of the size stratum of a node whose true short axis is `short_axis_mm`."""
    return _stratum_name(short_axis_mm, SIZE_STRATA_MM, "short axis", " mm")


def contact_stratum(fraction: float) -> str:
    """Name of the contact stratum of a node with this share of its surface on similar tissue."""
    return _stratum_name(100.0 * fraction, tuple(100.0 * b for b in CONTACT_STRATA), "contact", " %")


def summarise_by_size(scores: list[NodeScore], threshold: float = 0.5, n_boot: int = 1000) -> dict:
    """summarise() per true short-axis stratum (nodes with a true mask), smallest first."""
    return _summarise_by(scores, "true_short_axis_mm", size_stratum, threshold, n_boot)


def summarise_by_contact(scores: list[NodeScore], threshold: float = 0.5, n_boot: int = 1000) -> dict:
    """summarise() per contact stratum (nodes with a true mask), least contact first."""
    return _summarise_by(scores, "contact_fraction", contact_stratum, threshold, n_boot)


def _stratum_name(value: float, bounds, what: str, unit: str) -> str:
    lower = 0.0
    for upper in bounds:
        if value <= upper:
            return f"{what} {lower:g}-{upper:g}{unit}"
        lower = upper
    return f"{what} > {lower:g}{unit}"


def _summarise_by(scores, attribute: str, name_of, threshold: float, n_boot: int) -> dict:
    groups: dict[str, list[NodeScore]] = {}
    for score in sorted(scores, key=lambda s: getattr(s, attribute)):
        value = getattr(score, attribute)
        if not math.isnan(value):
            groups.setdefault(name_of(value), []).append(score)
    return {name: summarise(group, threshold, n_boot) for name, group in groups.items()}


def contact_fraction(truth: np.ndarray, image: np.ndarray, spacing_kji) -> float:
    """Share of the band 1.5-3 mm outside the node whose CT, lightly smoothed against noise, reads
    as tissue of similar attenuation (SIMILAR_ATTENUATION_HU). The band starts beyond the node's
    own blurred edge, which would otherwise read as soft tissue around a node in pure fat."""
    spacing_kji = np.asarray(spacing_kji, dtype=float)
    idx = np.argwhere(truth)
    pad = np.ceil(CONTACT_BAND_MM[1] / spacing_kji).astype(int) + 1
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + 1 + pad, truth.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    distance = ndimage.distance_transform_edt(~truth[box], sampling=spacing_kji)
    band = (distance > CONTACT_BAND_MM[0]) & (distance <= CONTACT_BAND_MM[1])
    if not band.any():
        return float("nan")
    smooth = ndimage.gaussian_filter(np.asarray(image[box], dtype=np.float32), 0.7 / spacing_kji, truncate=3.0)
    values = smooth[band]
    low, high = SIMILAR_ATTENUATION_HU
    return float(((values >= low) & (values <= high)).mean())


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


def score_case(engine, manifest_case, interactive_clicks: int = 0) -> list[NodeScore]:
    image, geometry, _ = read_volume(manifest_case.image)
    label_map = None
    if manifest_case.label_map:  # checked before the network runs
        label_map, label_geometry, _ = read_volume(manifest_case.label_map)
        check_same_grid(label_geometry, geometry, manifest_case.label_map, manifest_case.image)
    seeds = [Seed(n.node_id, n.ras) for n in manifest_case.nodes]
    case = Case(image, geometry, seeds)
    results = engine.predict(case)
    truth_p = _truth_probabilities(manifest_case.nodes_csv) if manifest_case.nodes_csv else {}
    scores = []
    for node, result in zip(manifest_case.nodes, results):
        # a node without a usable mask shows no probability; the metrics score what the network said
        probability = result.probability if has_usable_mask(result.status) else result.network_probability
        score = NodeScore(manifest_case.case_id, node.node_id, node.label, probability,
                          result.short_axis_mm, true_probability=truth_p.get(node.node_id, float("nan")),
                          slice_mm=float(max(geometry.spacing)), empty_mask=result.is_empty)
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
                score.contact_fraction = contact_fraction(truth, image, geometry.spacing[::-1])
                if interactive_clicks > 0:
                    score.interactive = score_interactively(
                        engine, case, node.node_id, node.ras, truth, predicted, interactive_clicks,
                        true_node.extra.get("long_axis_ras"))
        scores.append(score)
    return scores


def evaluate_manifest(engine, manifest, out_dir, progress=None, n_boot: int = 1000,
                      interactive_clicks: int = 0) -> dict:
    """Score `engine` on every node of the manifest; interactive_clicks K > 0 also simulates up to
    K clicks per node with a true mask and tries its line and its box alone."""
    if interactive_clicks > 0:  # before any case is read: NaN lines and boxes would look like a weak model
        engine.require_prompt_channels()
    cases = read_manifest(manifest)
    scores: list[NodeScore] = []
    for n, case in enumerate(cases):
        scores.extend(score_case(engine, case, interactive_clicks))
        if progress:
            progress("cases", n + 1, len(cases))
    summary = summarise(scores, engine.config.metastasis_threshold, n_boot)
    threshold = engine.config.metastasis_threshold
    summary["by_slice_thickness"] = summarise_by_slice_thickness(scores, threshold, n_boot)
    summary["by_size"] = summarise_by_size(scores, threshold, n_boot)
    summary["by_contact"] = summarise_by_contact(scores, threshold, n_boot)
    summary["model_id"] = engine.model_id
    summary["weights_sha256"] = engine.model.weights_sha256
    summary["manifest"] = str(manifest)
    from .report import write_report  # matplotlib only when a report is written

    write_report(Path(out_dir), scores, summary)
    return summary
