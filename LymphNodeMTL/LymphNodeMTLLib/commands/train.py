"""`lymphnode-mtl train`: manifest -> model folder."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import InputError
from ..training.trainer import CHECKPOINT, TrainConfig, Trainer


def run_train(args) -> dict:
    try:
        config = TrainConfig.from_json(args.config) if args.config else TrainConfig()
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"cannot read training config {args.config}: {e}") from None
    trainer = Trainer(config, args.out)
    if args.resume:
        checkpoint = Path(args.out) / CHECKPOINT
        if not checkpoint.is_file():
            raise InputError(f"--resume: {checkpoint} does not exist; start without --resume")
        trainer.load_checkpoint(checkpoint)
    trainer.prepare(args.manifest)
    trainer.fit()
    metrics = trainer.finish()
    print(f"model written to {args.out}: {metrics}")
    return metrics
