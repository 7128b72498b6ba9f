"""`lymphnode-mtl evaluate`: model folder + manifest -> predictions.csv and report.{md,json,png}."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from ..evaluation.evaluator import evaluate_manifest
from ..inference.engine import NodeEngine


def run_evaluate(args) -> dict:
    engine = NodeEngine(args.model, args.device)
    with tqdm(desc="cases", unit="case", disable=None) as bar:
        def progress(_stage, done, total):
            bar.total = total
            bar.update(done - bar.n)

        summary = evaluate_manifest(engine, args.manifest, Path(args.out), progress)
    keys = ("auc", "bayes_ceiling_auc", "accuracy", "sensitivity", "specificity", "ece", "dice_mean")
    print(", ".join(f"{k} {summary[k]:.3f}" for k in keys if k in summary))
    print(f"report: {Path(args.out) / 'report.md'}")
    return summary
