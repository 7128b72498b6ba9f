"""The evaluation report: predictions.csv, report.json, report.md and PNG plots (ROC with the
short-axis rule's operating point, calibration curve, Dice histogram)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .node_scores import SHORT_AXIS_RULE_MM, summary_json, write_predictions_csv  # noqa: E402


def _roc_points(labels, scores):
    order = np.argsort(-np.asarray(scores))
    y = np.asarray(labels)[order]
    tpr = np.concatenate([[0], np.cumsum(y) / max(y.sum(), 1)])
    fpr = np.concatenate([[0], np.cumsum(1 - y) / max((1 - y).sum(), 1)])
    return fpr, tpr


def plot_roc(path: Path, scores, summary: dict) -> None:
    labelled = [s for s in scores if s.label is not None]
    y = [s.label for s in labelled]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    fpr, tpr = _roc_points(y, [s.probability for s in labelled])
    ax.plot(fpr, tpr, label=f"model (AUC {summary.get('auc', float('nan')):.3f})")
    if "bayes_ceiling_auc" in summary:
        fpr_b, tpr_b = _roc_points(y, [s.true_probability for s in labelled])
        ax.plot(fpr_b, tpr_b, ":", label=f"Bayes ceiling (AUC {summary['bayes_ceiling_auc']:.3f})")
    for key, marker in (("short_axis_rule_predicted_mask", "o"), ("short_axis_rule_true_mask", "s")):
        rule = summary.get(key)
        if rule:
            ax.plot(1 - rule["specificity"], rule["sensitivity"], marker, markersize=8,
                    label=f"short axis >= {SHORT_AXIS_RULE_MM:.0f} mm ({key.split('_rule_')[1].replace('_', ' ')})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_calibration(path: Path, scores, bins: int = 10) -> None:
    labelled = [s for s in scores if s.label is not None]
    p = np.array([s.probability for s in labelled])
    y = np.array([s.label for s in labelled])
    idx = np.minimum((p * bins).astype(int), bins - 1)
    centres, observed, counts = [], [], []
    for b in range(bins):
        sel = idx == b
        if sel.any():
            centres.append(p[sel].mean())
            observed.append(y[sel].mean())
            counts.append(int(sel.sum()))
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
    ax.plot(centres, observed, "o-")
    for c, o, n in zip(centres, observed, counts):
        ax.annotate(str(n), (c, o), fontsize=6, textcoords="offset points", xytext=(3, -8))
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed metastasis rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_dice(path: Path, scores) -> None:
    dice = [s.dice for s in scores if not np.isnan(s.dice)]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.hist(dice, bins=np.linspace(0, 1, 41))
    ax.set_xlabel("Dice (predicted vs true mask, CT grid)")
    ax.set_ylabel("nodes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(summary: dict, key: str) -> str:
    v = summary.get(key)
    if v is None:
        return "n/a"
    ci = summary.get(f"{key}_ci95")
    return f"{v:.3f}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def _strata_table(strata: dict, title: str = "By slice thickness of the source CT") -> list[str]:
    """The headline figures per stratum (slice thickness, size, contact)."""
    if not strata:
        return []
    lines = ["", f"{title}:", "",
             "| stratum | nodes | AUC | Bayes ceiling | AUC of short axis | ECE | Dice mean | Dice p10 | empty masks |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in strata.items():
        rule = s.get("short_axis_rule_predicted_mask") or {}
        cells = [_fmt(s, "auc"), _fmt(s, "bayes_ceiling_auc"),
                 "n/a" if "auc_of_short_axis" not in rule else f"{rule['auc_of_short_axis']:.3f}",
                 _fmt(s, "ece"), _fmt(s, "dice_mean"), _fmt(s, "dice_p10"), str(s.get("empty_masks", "n/a"))]
        lines.append(f"| {name} | {s['nodes']} | " + " | ".join(cells) + " |")
    return lines


def _interactive_table(summary: dict) -> list[str]:
    """Dice after 0..K simulated clicks, NoC@85/90, line and box Dice: overall and per stratum."""
    if "interactive" not in summary:
        return []
    clicks = len(summary["interactive"]["dice_after_clicks"])
    lines = ["", "Interactive (clicks at the centre of the largest error region; NoC = clicks to reach the Dice, "
             f"{clicks} when never):", "",
             "| nodes | " + " | ".join(f"Dice {k} clicks" for k in range(clicks))
             + " | NoC@85 | NoC@90 | line alone | box alone |",
             "|---|" + "---|" * (clicks + 5)]
    rows = [("all", summary)]
    for key in ("by_size", "by_contact", "by_slice_thickness"):
        rows += [(name, s) for name, s in (summary.get(key) or {}).items() if "interactive" in s]
    for name, s in rows:
        i = s["interactive"]
        cells = [f"{d:.3f}" for d in i["dice_after_clicks"]] + [f"{i['noc85']:.2f}", f"{i['noc90']:.2f}",
                                                                 f"{i['line_dice']:.3f}", f"{i['box_dice']:.3f}"]
        lines.append(f"| {name}: {i['nodes']} | " + " | ".join(cells) + " |")
    return lines


def markdown(summary: dict) -> str:
    lines = [f"# Evaluation of {summary.get('model_id')}", "",
             f"Manifest: `{summary.get('manifest')}`; {summary['nodes']} nodes, "
             f"{summary['labelled_nodes']} labelled.", "", "| metric | value |", "|---|---|"]
    for key in ("auc", "accuracy", "sensitivity", "specificity", "ece", "dice_mean", "dice_median",
                "dice_p10", "hd95_mm_median", "bayes_ceiling_auc", "prevalence"):
        if key in summary:
            lines.append(f"| {key} | {_fmt(summary, key)} |")
    if "empty_masks" in summary:
        lines.append(f"| empty_masks | {summary['empty_masks']} of {summary['nodes']} |")
    if not summary.get("labelled_nodes"):
        lines.append("| auc | not computed: the manifest has no labels |")
    for key in ("short_axis_rule_predicted_mask", "short_axis_rule_true_mask"):
        rule = summary.get(key)
        if rule:
            lines.append(f"| {key} | sens {rule['sensitivity']:.3f}, spec {rule['specificity']:.3f}, "
                         f"acc {rule['accuracy']:.3f}, AUC of short axis {rule['auc_of_short_axis']:.3f} |")
    lines += _interactive_table(summary)
    lines += _strata_table(summary.get("by_slice_thickness") or {})
    lines += _strata_table(summary.get("by_size") or {}, "By size (true short axis)")
    lines += _strata_table(summary.get("by_contact") or {}, "By contact with similar-attenuation tissue (share of the node's outer surface)")
    lines += ["", "![ROC](roc.png) ![calibration](calibration.png) ![Dice](dice.png)", ""]
    return "\n".join(lines)


def write_report(out_dir: Path, scores, summary: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_predictions_csv(out_dir / "predictions.csv", scores)
    (out_dir / "report.json").write_text(summary_json(summary))
    (out_dir / "report.md").write_text(markdown(summary))
    if summary.get("labelled_nodes"):
        plot_roc(out_dir / "roc.png", scores, summary)
        plot_calibration(out_dir / "calibration.png", scores)
    plot_dice(out_dir / "dice.png", scores)
