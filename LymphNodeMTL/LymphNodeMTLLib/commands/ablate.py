"""`lymphnode-mtl ablate`: train every component variant on one manifest, score them on another,
write one table (ablation.md + ablation.json) with the exact command and budget."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ..core.errors import InputError

TABLE_FILES = ("ablation.md", "ablation.json")

EPILOG = """\
variants (default: all, in this order):
  single_task_classifier  same encoder, no mask branch; pools under a ball around the seed
  single_task_segmenter   same encoder and decoder, no metastasis head
  base                    the multi-task network (M2ANet pooling, uncertainty weighting)
  ma_mtln                 + multi-scale fusion, attention, task-aware attention, deep supervision
  mt_ids                  + routing gate, gradient balancer, auxiliary short axis
  sd_mdanet               + dense attention, task-specific attention, mixed head, distillation
  la_net                  + lesion-attention head, two-stage pseudo-masks
  best                    the components whose validation AUC beat the base, together

outputs in DIR: ablation.md, ablation.json, models/<variant>/ (model folders)

example:
  lymphnode-mtl ablate --manifest train/manifest.csv --test-manifest test/manifest.csv \\
      --out ablation/ --budget-minutes 30
"""


def add_arguments(a: argparse.ArgumentParser) -> None:
    from .cli import device_name, non_negative_int, positive_float, positive_int

    a.add_argument("--manifest", required=True, metavar="M", help="training manifest (one split for every variant)")
    a.add_argument("--test-manifest", required=True, metavar="M", help="test manifest with per-node truth")
    a.add_argument("--out", required=True, metavar="DIR", help="folder for the table and the model folders")
    a.add_argument("--budget-minutes", type=positive_float, default=None, metavar="M",
                   help="training time per variant (default: no limit, --epochs decides)")
    a.add_argument("--epochs", type=non_negative_int, default=None, metavar="N", help="maximum epochs per variant")
    a.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                   help="which rows (default: all; names below)")
    a.add_argument("--config", metavar="C", help="training config JSON shared by every variant (see TrainConfig)")
    a.add_argument("--device", type=device_name, default=None, metavar="auto|cpu|cuda", help="overrides the config's device")
    a.add_argument("--mask-fraction", type=float, default=1.0, metavar="F",
                   help="keep true masks on this share of training nodes (pseudo-mask experiments; default 1)")
    a.add_argument("--label-fraction", type=float, default=1.0, metavar="F",
                   help="keep labels on this share of training nodes (distillation experiments; default 1)")
    a.add_argument("--bootstrap", type=positive_int, default=1000, metavar="N", help="bootstrap resamples for the CIs")
    a.add_argument("--overwrite", action="store_true",
                   help="replace the table (and retrain the variants) of an earlier run in DIR")
    a.add_argument("--resume", action="store_true",
                   help="reuse variants already trained in DIR/models with the same config (a run cut off "
                        "part-way goes on where it stopped)")


def command_line(args) -> str:
    """The command as it would be typed again (the table states it)."""
    parts = ["lymphnode-mtl", "ablate", "--manifest", str(args.manifest), "--test-manifest", str(args.test_manifest),
             "--out", str(args.out)]
    for flag, value in (("--budget-minutes", args.budget_minutes), ("--epochs", args.epochs),
                        ("--config", args.config), ("--device", args.device)):
        if value is not None:
            parts += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if args.variants:
        parts += ["--variants", *args.variants]
    if getattr(args, "resume", False):
        parts.append("--resume")
    for flag, value, default in (("--mask-fraction", args.mask_fraction, 1.0),
                                 ("--label-fraction", args.label_fraction, 1.0),
                                 ("--bootstrap", args.bootstrap, 1000)):
        if value != default:
            parts += [flag, f"{value:g}"]
    return shlex.join(parts)


def run(args) -> dict:
    from ..evaluation.ablation.ablation import DEFAULT_VARIANTS, VARIANT_NAMES, run_ablation
    from ..outputs.output_folder import FolderLock, check_folder_path, cleanup_on_signals, os_error_line
    from ..training.trainer import TrainConfig

    unknown = [v for v in args.variants or () if v not in VARIANT_NAMES]
    if unknown:
        raise InputError(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANT_NAMES)}")
    try:
        base = TrainConfig.from_json(args.config) if args.config else TrainConfig()
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"cannot read training config {args.config}: {e}") from None
    if args.budget_minutes is not None:
        base.max_minutes = args.budget_minutes
    if args.epochs is not None:
        base.epochs = args.epochs
    if args.device is not None:
        base.device = args.device
    for name, value in (("--mask-fraction", args.mask_fraction), ("--label-fraction", args.label_fraction)):
        if not 0.0 < value <= 1.0:
            raise InputError(f"{name} must be in (0, 1], got {value}")
    out = Path(args.out)
    check_folder_path(out)
    earlier = [n for n in TABLE_FILES if (out / n).exists()]
    if earlier and not (args.resume or args.overwrite):
        raise InputError(f"{out} already holds an ablation ({', '.join(earlier)}); choose another --out, "
                         "pass --resume to go on with it, or --overwrite to replace it")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(os_error_line(e, out)) from None
    lock = FolderLock(out)
    lock.acquire()  # two ablations in one folder would train over each other's variants
    try:
        with cleanup_on_signals():
            return run_ablation(args.manifest, args.test_manifest, out, base=base,
                                variants=tuple(args.variants or DEFAULT_VARIANTS), n_boot=args.bootstrap,
                                mask_fraction=args.mask_fraction, label_fraction=args.label_fraction,
                                command=command_line(args), resume=args.resume)
    finally:
        lock.release()
