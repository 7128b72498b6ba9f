"""`lymphnode-mtl evaluate`: model folder + manifest -> predictions.csv and report.{md,json,png},
written together into --out (locked while the run writes)."""

from __future__ import annotations

from pathlib import Path


def add_arguments(e) -> None:
    from .cli import device_name, non_negative_int

    e.add_argument("--model", metavar="MODELDIR", help="model folder (default: the bundled demo model)")
    e.add_argument("--manifest", required=True, metavar="M")
    e.add_argument("--out", required=True, metavar="DIR", help="folder for predictions.csv and the report")
    e.add_argument("--device", type=device_name, default="auto", metavar="auto|cpu|cuda")
    e.add_argument("--interactive", type=non_negative_int, default=0, metavar="K",
                   help="also simulate up to K clicks per node (at the centre of the largest error) and try its "
                        "long-axis line and its box alone: Dice after 0..K clicks, NoC@85/90, line and box Dice")


def run(args) -> dict:
    from tqdm import tqdm

    from ..evaluation.evaluator import evaluate_manifest
    from ..inference.engine import NodeEngine
    from ..outputs.output_folder import OutputFolder, cleanup_on_signals

    engine = NodeEngine(args.model, args.device)
    # an evaluation's own files are replaced by the next one; nothing else in --out is touched
    folder = OutputFolder(args.out, (), overwrite=True)
    folder.check()
    with cleanup_on_signals(), folder, tqdm(desc="cases", unit="case", disable=None) as bar:
        def progress(_stage, done, total):
            bar.total = total
            bar.update(done - bar.n)

        summary = evaluate_manifest(engine, args.manifest, folder.staging, progress,
                                    interactive_clicks=args.interactive)
        folder.publish(sorted(p.name for p in folder.staging.iterdir()))
    keys = ("auc", "bayes_ceiling_auc", "accuracy", "sensitivity", "specificity", "ece", "dice_mean")
    print(", ".join(f"{k} {summary[k]:.3f}" for k in keys if k in summary))
    if "interactive" in summary:
        i = summary["interactive"]
        print("Dice after 0..K clicks " + " ".join(f"{d:.3f}" for d in i["dice_after_clicks"])
              + f", NoC@85 {i['noc85']:.2f}, NoC@90 {i['noc90']:.2f}, line {i['line_dice']:.3f}, box {i['box_dice']:.3f}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return summary
