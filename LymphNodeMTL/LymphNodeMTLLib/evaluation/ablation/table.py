"""The ablation table: one markdown row per variant with its test metrics, its difference to the
base and the verdict, then the reference rows (size rule, Bayes ceiling) and the notes."""

from __future__ import annotations

import math


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
        "- Metrics from evaluation/evaluator.py on the test manifest (engine predictions from the seeds, CT grid): "
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
