"""`lymphnode-mtl train`: manifest -> model folder.

Everything that can be checked is checked before training starts: the recipe's ranges, the
manifest (every node inside its CT, label maps on their CT's grid) and --out (not a file, not an
existing model folder without --overwrite, writable).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from ..core.errors import InputError

# files that make a folder a model folder (network/model_store.py writes them)
MODEL_FILES = ("config.json", "model.safetensors")


def add_arguments(t) -> None:
    t.add_argument("--manifest", required=True, metavar="M", help="manifest.csv (see README)")
    t.add_argument("--out", required=True, metavar="MODELDIR", help="model folder to write (created)")
    t.add_argument("--config", metavar="C", help="training config JSON (see TrainConfig)")
    t.add_argument("--resume", action="store_true", help="continue from MODELDIR/checkpoint.pt")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the model already in MODELDIR (refused by default)")


def check_train_config(config) -> None:
    """Refuse a recipe whose values mean nothing (negative epochs, batch size 0, ...): one line."""
    def need(ok: bool, what: str, value) -> None:
        if not ok:
            raise InputError(f"training config: {what}, got {value!r}; fix it in the config JSON")

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    need(whole(config.epochs) and config.epochs >= 0, "epochs must be a whole number, 0 or more", config.epochs)
    need(whole(config.batch_size) and config.batch_size >= 1, "batch_size must be a whole number, at least 1",
         config.batch_size)
    need(number(config.lr) and config.lr > 0, "lr must be a number above 0", config.lr)
    need(number(config.weight_decay) and config.weight_decay >= 0, "weight_decay must be 0 or more",
         config.weight_decay)
    need(number(config.val_fraction) and 0 <= config.val_fraction < 1, "val_fraction must be in [0, 1)",
         config.val_fraction)
    need(whole(config.patience) and config.patience >= 0, "patience must be a whole number, 0 or more",
         config.patience)
    need(number(config.jitter_mm) and config.jitter_mm >= 0, "jitter_mm must be 0 or more", config.jitter_mm)
    for name in ("teacher_forcing", "guidance_dropout"):
        value = getattr(config, name)
        need(number(value) and 0 <= value <= 1, f"{name} must be in [0, 1]", value)
    need(config.max_minutes is None or (number(config.max_minutes) and config.max_minutes > 0),
         "max_minutes must be above 0 or null", config.max_minutes)
    need(whole(config.num_workers) and config.num_workers >= 0, "num_workers must be 0 or more",
         config.num_workers)
    need(isinstance(config.model_id, str) and config.model_id.strip() != "", "model_id must be a name",
         config.model_id)


def check_model_out(out: Path, overwrite: bool, resume: bool) -> None:
    """--out must be a folder that can take a model: not a file, not someone's model (without
    --overwrite or --resume), writable. Checked before training, not after it."""
    from ..outputs.output_folder import check_folder_path, os_error_line

    check_folder_path(out)
    existing = [n for n in MODEL_FILES if (out / n).exists()]
    if existing and not (overwrite or resume):
        raise InputError(f"{out} already holds a model ({', '.join(existing)}); choose another --out, "
                         "or pass --overwrite to replace it")
    probe_dir = out
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".lymphnode-mtl-write-test-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(os_error_line(e, probe_dir)) from None


def run(args) -> dict:
    from ..io.training_manifest import check_manifest_geometry, read_manifest
    from ..outputs.output_folder import cleanup_on_signals
    from ..training.trainer import CHECKPOINT, TrainConfig, Trainer

    try:
        config = TrainConfig.from_json(args.config) if args.config else TrainConfig()
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"cannot read training config {args.config}: {e}") from None
    check_train_config(config)
    out = Path(args.out)
    check_model_out(out, args.overwrite, args.resume)
    check_manifest_geometry(read_manifest(args.manifest))
    trainer = Trainer(config, out)
    if args.resume:
        checkpoint = out / CHECKPOINT
        if not checkpoint.is_file():
            raise InputError(f"--resume: {checkpoint} does not exist; start without --resume")
        trainer.load_checkpoint(checkpoint)
    # a scheduler's time limit or a closed terminal unwinds like Ctrl-C: no temporary file stays,
    # and the last whole checkpoint is kept for --resume
    with cleanup_on_signals():
        trainer.prepare(args.manifest)
        trainer.fit()
        metrics = trainer.finish()
    print(f"model written to {out}: {metrics}")
    return metrics
