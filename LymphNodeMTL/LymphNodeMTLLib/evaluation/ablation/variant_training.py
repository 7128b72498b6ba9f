"""Training the ablation's variants one after another on the same cached nodes.

Each variant gets a model folder under models/<name>; a variant that distils learns from the
folders of its teachers trained earlier in the same run. With `resume`, a folder left by an
earlier (perhaps cut off) run is reused when it was trained with exactly this variant's config.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from ...core.errors import ModelError
from ...network.model_store import load_model
from ...training.node_patch_dataset import PatchCache
from ...training.trainer import TrainConfig, Trainer, seed_everything
from .variants import BEST, VARIANTS, Variant, choose_best, combine_variants, config_components, variant_config

# what the trainer adds to the saved training config after the run, and settings that change
# only how fast it runs (a variant trained with other data-loader workers is the same variant)
_RUN_OUTCOME_KEYS = ("history", "validation", "world_size", "num_workers", "initial_weights")


def finished_variant(folder: Path, config: TrainConfig) -> dict | None:
    """{"epochs", "train_minutes", "validation"} of a model folder trained with exactly `config`
    (its saved training config, less the run's outcome), else None."""
    try:
        saved = load_model(folder).config.training
    except ModelError:
        return None
    wanted = json.loads(json.dumps(asdict(config)))  # tuples -> lists, as in config.json
    keys = (set(saved) | set(wanted)) - set(_RUN_OUTCOME_KEYS)
    # an option known to only one of the two versions matches where it is off (0, None, empty)
    if any(saved[k] != wanted[k] if k in saved and k in wanted else bool(saved.get(k) or wanted.get(k))
           for k in keys):
        return None
    history = saved.get("history") or []
    return {"epochs": len(history), "train_minutes": history[-1]["minutes"] if history else float("nan"),
            "validation": saved.get("validation") or {}}


class VariantTraining:
    """Trains variants into `models_dir` and keeps one record per variant (in training order) and
    the notes the table prints.

    Args:
        base: the training config every variant starts from.
        cache: the training nodes, shared by every variant.
        models_dir: where the variants' model folders go.
        resume: reuse a folder trained with exactly the variant's config.
        log: progress lines.
    """

    def __init__(self, base: TrainConfig, cache: PatchCache, models_dir: Path, resume: bool = False, log=print):
        self.base = base
        self.cache = cache
        self.models_dir = Path(models_dir)
        self.resume = resume
        self.log = log
        self.records: dict[str, dict] = {}
        self.notes: list[str] = []

    def train(self, variant: Variant) -> None:
        """Train `variant` (or reuse its earlier folder) and record it."""
        teacher_dirs = self._teacher_dirs(variant)
        config = variant_config(self.base, variant, teacher_dirs)
        folder = self.models_dir / variant.name
        record = {
            "name": variant.name, "title": variant.title, "paper": variant.paper,
            "network": variant.network, "training_components": config_components(config),
            "teachers": [p.name for p in teacher_dirs], "folder": str(folder),
        }
        earlier = finished_variant(folder, config) if self.resume else None
        if earlier is not None:
            self.records[variant.name] = {**record, **earlier, "reused": True}
            self.log(f"  reused {variant.name} from {folder}: {earlier['epochs']} epochs, validation AUC "
                     f"{earlier['validation'].get('val_auc', float('nan')):.3f}")
            return
        self.records[variant.name] = {**record, **self._fit(config, folder)}
        rec = self.records[variant.name]
        self.log(f"  trained {variant.name}: {rec['epochs']} epochs in {rec['train_minutes']:.2f} "
                 f"min, validation AUC {rec['validation'].get('val_auc', float('nan')):.3f}")

    def train_best(self) -> None:
        """The "best" row: the components that beat the base on validation AUC, trained together;
        one such component is its own row under the name "best"; none leaves a note."""
        best = choose_best(self.records)
        if best is None:
            self.notes.append("best combination: no component variant beat the base on validation AUC; none trained")
        elif len(best) == 1:
            self.notes.append(f"best combination: only {best[0]} beat the base on validation AUC; its row is the best")
            self.records[BEST] = {**self.records[best[0]], "name": BEST,
                                  "title": f"Best combination = {VARIANTS[best[0]].paper} alone",
                                  "same_as": best[0]}
        else:
            self.train(combine_variants(best))

    def _teacher_dirs(self, variant: Variant) -> list[Path]:
        """Folders of the variant's teachers trained in this run; a note names the missing ones."""
        present = [t for t in variant.teachers if t in self.records]
        missing = [t for t in variant.teachers if t not in self.records]
        if missing and "distillation" in variant.train:
            self.notes.append(f"{variant.name}: teachers {', '.join(missing)} not in this run; distilled from "
                              f"{', '.join(present) or 'none (no distillation)'}")
        return [self.models_dir / t for t in present]

    def _fit(self, config: TrainConfig, folder: Path) -> dict:
        seed_everything(config.seed)
        t0 = time.perf_counter()
        trainer = Trainer(config, folder, log=lambda *_: None)
        trainer.set_cache(self.cache)
        trainer.fit()
        validation = trainer.finish()
        (folder / "checkpoint.pt").unlink(missing_ok=True)
        return {"epochs": len(trainer.history), "train_minutes": (time.perf_counter() - t0) / 60,
                "validation": validation}
