"""Training: manifest -> cached node patches -> multi-task network -> calibrated model folder.

AdamW with a cosine schedule, uncertainty-weighted multi-task loss, mixed precision (bf16 on GPUs and
AMX/AVX512-BF16 CPUs; fp16 with loss scaling on older GPUs), a checkpoint
every epoch (resumable), early stopping on the validation loss, temperature calibration on the
validation nodes (and, after a descriptor refit, on the training nodes' cross-fitted logits too),
reproducible seeds. Under `torchrun` it trains with DistributedDataParallel
(NCCL on GPUs, gloo on CPUs) with no code change; only rank 0 logs and writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.classification_metrics import roc_auc
from ..core.device import resolve_device
from ..core.errors import InputError
from ..io.training_manifest import read_manifest
from ..network.input_widening import widen_input_channels
from ..network.model_store import ModelConfig, load_model, save_model
from ..preprocessing.network_input import PreprocessingConfig, network_input
from . import distributed
from .descriptor_refit import collect_head_inputs, cross_fitted_logits, refit_descriptor_path, refittable
from .gradient_balancer import GradientBalancer
from .interaction_simulation import InteractionConfig, batch_prompts, simulate_clicks
from .losses.multitask_loss import build_loss
from .losses.self_distillation import DistillationConfig, teacher_logits
from .mixed_precision import autocast_dtype
from .node_patch_dataset import NodePatchDataset, PatchCache, build_patch_cache, spacing_levels
from .temperature_scaling import fit_temperature
from .training_module import MultiTaskTrainingModule

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    """Training recipe; saved into the model's config.json under "training"."""

    model_id: str = "lymphnode-mtl-custom"
    epochs: int = 20
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.15
    patience: int = 5
    seed: int = 0
    jitter_mm: float = 2.0
    teacher_forcing: float = 0.5  # share of steps where the head pools under the true mask
    guidance_dropout: float = 0.1
    max_minutes: float | None = None
    device: str = "auto"
    mixed_precision: bool = True
    descriptor_refit: bool = True  # after training, refit the head's descriptor path (descriptor_refit.py)
    init_from: str | None = None  # fine-tuning: start from this model folder's weights (same network)
    num_workers: int = 0  # data-loader processes; samples are seeded per index, so results do not depend on it
    network: dict = field(default_factory=lambda: {"channels": [8, 16, 32, 64]})
    preprocessing: dict = field(default_factory=dict)
    # across spacings: [low, high] mm; every node is cached at `spacing_levels` spacings from low to
    # high (log-spaced; `spacing_levels_per_node` of them per node, None = all) and each step draws
    # one; the model's config then lists them as zoom_spacings_mm. None = one spacing.
    spacing_range_mm: list | None = None
    spacing_levels: int = 4
    spacing_levels_per_node: int | None = None
    # optional training components (docs/ablation.md); empty/None = the default recipe
    loss: dict = field(default_factory=dict)  # segmentation, mixed_lambda, deep_supervision_weights, ...
    gradient_balancer: dict | None = None  # MT-IDS DD-GB: {"momentum": 0.9}
    distillation: dict | None = None  # SD-MdaNet: {"teachers": [model dirs], "weights", "beta", "temperature"}
    pseudo_masks: dict | None = None  # LA-Net: {"threshold": 0.8, "weight": 0.1, "stage1_epochs": 1}
    # prompts (interaction_simulation.py): InteractionConfig's fields, {} for its defaults; needs
    # "prompt_channels": true in the preprocessing. None: seeds alone.
    interactions: dict | None = None
    # keep the weights of the epoch with the lowest validation loss (False: the last epoch's; the
    # validation loss reads seeds alone, so it cannot tell how well prompts are followed)
    keep_best: bool = True

    @classmethod
    def from_json(cls, path) -> "TrainConfig":
        return cls(**json.loads(Path(path).read_text()))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def initial_weights(model_dir, model_config: ModelConfig) -> tuple[dict, dict]:
    """The weights of a saved model to fine-tune (refused unless its network and preprocessing match,
    but for prompt channels this config adds: they start at zero weight, so the model starts as
    the source), and where they came from: its id, weights hash and training, kept in the new
    model's config."""
    source = load_model(model_dir)
    source_pre = dataclasses.replace(source.config.preprocessing,
                                     prompt_channels=model_config.preprocessing.prompt_channels)
    if (_recipe_network(source.config.network) != _recipe_network(model_config.network)
            or source_pre != model_config.preprocessing):
        raise InputError(f"init_from {model_dir}: its network or preprocessing differ from this training "
                         "config's; copy them from its config.json or train from scratch")
    provenance = {"model_id": source.config.model_id, "weights_sha256": source.weights_sha256,
                  "history": source.config.training.get("history", []),
                  "recipe": {k: v for k, v in source.config.training.items()
                             if k not in ("history", "validation", "initial_weights")}}
    if "initial_weights" in source.config.training:  # a fine-tuned source: keep the whole chain
        provenance["initial_weights"] = source.config.training["initial_weights"]
    # a refine MLP is the product of the source's refit, not of its recipe: this training's refit
    # fits its own, and until then the head is the source's deep + wide path
    state = {k: v for k, v in source.network.state_dict().items() if not k.startswith("head.refine.")}
    return widen_input_channels(state, model_config.build_network().state_dict()), provenance


def _recipe_network(network: dict) -> dict:
    return {k: v for k, v in network.items() if k != "head_refine_hidden"}


def trained_spacings(config: TrainConfig, pre: PreprocessingConfig) -> tuple[float, ...]:
    """The patch spacings (mm) a recipe trains at: its spacing range's levels, else the one."""
    if not config.spacing_range_mm:
        return (float(pre.patch_spacing_mm),)
    low, high = (float(v) for v in config.spacing_range_mm)
    if not low <= pre.patch_spacing_mm <= high:
        raise ValueError(f"spacing_range_mm {[low, high]} must hold the patch spacing "
                         f"{pre.patch_spacing_mm} mm, at which the network is built")
    # the network's own spacing is always one of them (its descriptors assume it)
    return tuple(sorted(set(spacing_levels(low, high, config.spacing_levels)) | {float(pre.patch_spacing_mm)}))


def split_by_case(cache: PatchCache, val_fraction: float, seed: int):
    """Validation nodes come from whole held-out cases (no leakage between a case's nodes)."""
    cases = sorted(set(cache.case_ids))
    rng = np.random.default_rng(seed)
    rng.shuffle(cases)
    n_val = max(1, int(round(len(cases) * val_fraction))) if len(cases) > 1 else 0
    val_cases = set(cases[:n_val])
    val = [i for i, c in enumerate(cache.case_ids) if c in val_cases]
    train = [i for i, c in enumerate(cache.case_ids) if c not in val_cases]
    return train, val


class Trainer:
    def __init__(self, config: TrainConfig, out_dir, log=print):
        self.config = config
        self.out_dir = Path(out_dir)
        self.log = log
        self.pre = PreprocessingConfig.from_dict(config.preprocessing)
        self.interactions = InteractionConfig.from_dict(config.interactions)
        if self.interactions is not None and not self.pre.prompt_channels:
            raise ValueError('interactions need "prompt_channels": true in the preprocessing')
        self.dist = distributed.setup(config.device)
        self.device = self.dist.device or resolve_device(config.device)
        seed_everything(config.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed patch size: let cuDNN pick the fastest 3-D convolutions
        self.model_config = ModelConfig(
            config.model_id, network=_recipe_network(config.network),
            preprocessing=self.pre, training=asdict(config),
            zoom_spacings_mm=trained_spacings(config, self.pre),  # the fields of view it is valid for
        )
        self.network = self.model_config.build_network()
        if config.init_from:
            state, provenance = initial_weights(config.init_from, self.model_config)
            self.network.load_state_dict(state)
            self.model_config.training["initial_weights"] = provenance
        self.network.to(self.device)
        self.distillation = DistillationConfig.from_dict(config.distillation)
        loss = build_loss(self.network, config.loss, config.pseudo_masks,
                          self.distillation.loss() if self.distillation else None)
        self.module = MultiTaskTrainingModule(self.network, config.teacher_forcing, loss).to(self.device)
        self.balancer = GradientBalancer(**config.gradient_balancer) if config.gradient_balancer is not None else None
        if self.balancer is not None and self.dist.enabled:
            raise ValueError("gradient_balancer works on one process; train it without torchrun")
        self.teacher_logits = None
        self.loss = self.module.loss
        self.train_module = distributed.wrap(self.module, self.dist)
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, config.epochs))
        self.amp_dtype = autocast_dtype(self.device) if config.mixed_precision else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.epoch = 0
        self.best_val = math.inf
        self.bad_epochs = 0
        self.history: list[dict] = []
        self.calibration_nodes = None  # (logits, labels) held out from the descriptor refit, if it ran

    # --- data ---------------------------------------------------------------------------------
    def prepare(self, manifest) -> None:
        t0 = time.perf_counter()
        cache = build_patch_cache(read_manifest(manifest), self.pre, self.config.jitter_mm,
                                  **self.cache_spacing_options())
        self.set_cache(cache)
        self.log(f"cached {len(cache)} nodes in {time.perf_counter() - t0:.1f} s "
                 f"({len(self.train_idx)} train, {len(self.val_idx)} validation)")

    def cache_spacing_options(self) -> dict:
        """build_patch_cache's spacing arguments for this recipe (none for one spacing)."""
        spacings = trained_spacings(self.config, self.pre)
        if spacings == (self.pre.patch_spacing_mm,):
            return {}
        return {"spacings_mm": spacings, "levels_per_node": self.config.spacing_levels_per_node,
                "seed": self.config.seed}

    def set_cache(self, cache: PatchCache) -> None:
        self.cache = cache
        self.train_idx, self.val_idx = split_by_case(cache, self.config.val_fraction, self.config.seed)
        self.train_set = NodePatchDataset(cache.subset(self.train_idx), self.pre, True,
                                          self.config.jitter_mm, self.config.seed, self.interactions)
        self.val_set = NodePatchDataset(cache.subset(self.val_idx), self.pre, False) if self.val_idx else None
        if self.distillation is not None:
            full = teacher_logits(self.distillation.teachers, cache, self.pre, self.device)
            self.teacher_logits = full[:, torch.as_tensor(self.train_idx, dtype=torch.long)]

    def _loader(self, dataset, shuffle: bool):
        g = torch.Generator().manual_seed(self.config.seed + self.epoch)
        sampler = distributed.sampler(dataset, self.dist, shuffle, self.config.seed, self.epoch) if shuffle else None
        workers = self.config.num_workers
        return torch.utils.data.DataLoader(dataset, batch_size=self.config.batch_size, sampler=sampler,
                                           shuffle=shuffle and sampler is None, generator=g, num_workers=workers,
                                           pin_memory=self.device.type == "cuda", persistent_workers=False)

    def _inputs(self, batch, train: bool, prompts=None):
        """The network input as inference builds it (with each sample's prompts, if any); while
        training, a share of the unprompted nodes lose their seed guidance (guidance_dropout), so
        the network also segments without it."""
        x = network_input(batch["image"].to(self.device), self.pre, prompts)
        if train and self.config.guidance_dropout > 0:
            drop = torch.rand(x.shape[0], device=self.device) < self.config.guidance_dropout
            if prompts is not None:
                drop &= torch.tensor([p is None for p in prompts], device=self.device)
            x[drop, 1:] = 0.0
        return x

    def _prompted_inputs(self, batch):
        """A training batch's input with its drawn prompts and, where drawn, the clicks simulated
        on the network's current predictions (interaction_simulation.py); and which rows have
        prompts. Without interactions: the plain input, no row prompted."""
        if self.interactions is None:
            return self._inputs(batch, train=True), torch.zeros(len(batch["image"]), dtype=torch.bool)
        prompts = batch_prompts(batch)
        if int(batch["clicks"].max()) > 0:
            image = batch["image"].to(self.device)

            @torch.no_grad()
            def predict_masks(rows, row_prompts):
                x = network_input(image[rows], self.pre, row_prompts)
                with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None):
                    logits = self.network.segment(x)
                return (logits[:, 0] > 0).cpu().numpy()

            truth = batch["mask"][:, 0].numpy() > 0.5
            prompts = simulate_clicks(predict_masks, prompts, truth, batch["clicks"].tolist())
        prompted = torch.tensor([p is not None for p in prompts])
        return self._inputs(batch, train=True, prompts=prompts), prompted

    # --- steps --------------------------------------------------------------------------------
    def _targets(self, batch):
        label = batch["label"].to(self.device)
        return (batch["mask"].to(self.device), batch["has_mask"].to(self.device), label, ~torch.isnan(label))

    def train_step(self, batch) -> dict:
        self.train_module.train()
        x, prompted = self._prompted_inputs(batch)
        mask, has_mask, label, has_label = self._targets(batch)
        # the probability is always read without prompts (the engine re-classifies a prompted
        # mask on the plain input), so prompted samples train the mask only
        has_label = has_label & ~prompted.to(self.device)
        losses = self.train_module(x, mask, has_mask, label, has_label, amp_dtype=self.amp_dtype,
                                   slice_mm=batch["slice_mm"].to(self.device), **self._extras(batch),
                                   spacing_mm=batch["spacing_mm"].to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        if self.balancer is not None:
            self.balancer.backward([self.scaler.scale(t) for t in losses["terms"]], self.network.shared_parameters())
        else:
            self.scaler.scale(losses["total"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {k: float(losses[k].detach()) for k in ("total", "seg", "cls")}

    def _extras(self, batch) -> dict:
        """Loss inputs beyond the targets: teacher logits (distillation), stations (when the data carry them)."""
        extras = {}
        if self.teacher_logits is not None:
            extras["teacher_logits"] = self.teacher_logits[:, batch["index"]].to(self.device)
        if "station" in batch:
            extras["station"] = batch["station"].to(self.device)
        return extras

    @torch.no_grad()
    def evaluate(self, dataset) -> dict:
        """Validation loss, AUC, mean patch Dice, and the raw logits for calibration."""
        self.module.eval()
        totals, logits, labels, dices = [], [], [], []
        for batch in self._loader(dataset, shuffle=False):
            x = self._inputs(batch, train=False)
            mask, has_mask, label, has_label = self._targets(batch)
            losses = self.module(x, mask, has_mask, label, has_label, slice_mm=batch["slice_mm"].to(self.device),
                                 spacing_mm=batch["spacing_mm"].to(self.device))
            out = losses["outputs"]
            totals.append(float(losses["seg"] + losses["cls"]) * x.shape[0])
            logits.append(out.metastasis_logit.float().cpu())
            labels.append(batch["label"])
            pred = (out.mask_logits > 0).float()
            inter = (pred * mask).flatten(1).sum(1)
            denom = pred.flatten(1).sum(1) + mask.flatten(1).sum(1)
            dice = (2 * inter / denom.clamp_min(1))[has_mask]
            dices.append(dice.cpu())
        logits_t, labels_t = torch.cat(logits), torch.cat(labels)
        known = ~torch.isnan(labels_t)
        auc = roc_auc(labels_t[known].numpy(), logits_t[known].numpy()) if known.any() else float("nan")
        dice_all = torch.cat(dices)
        return {
            "loss": sum(totals) / len(dataset),
            "auc": auc,
            "dice": float(dice_all.mean()) if len(dice_all) else float("nan"),
            "logits": logits_t,
            "labels": labels_t,
        }

    # --- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "network": self.network.state_dict(),
            "loss": self.loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": torch.tensor(self.epoch),
            "best_val": torch.tensor(self.best_val),
            "bad_epochs": torch.tensor(self.bad_epochs),
            "torch_rng": torch.get_rng_state(),
        }
        if self.balancer is not None and self.balancer.norm_ema is not None:
            state["balancer_norm_ema"] = torch.tensor(self.balancer.norm_ema)
        tmp = self.out_dir / (CHECKPOINT + ".tmp")
        try:
            torch.save(state, tmp)
            tmp.replace(self.out_dir / CHECKPOINT)  # the old checkpoint stays whole until then
        finally:
            tmp.unlink(missing_ok=True)

    def load_checkpoint(self, path) -> None:
        # weights_only: a checkpoint is data, never code
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.network.load_state_dict(state["network"])
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.best_val = float(state["best_val"])
        self.bad_epochs = int(state["bad_epochs"])
        torch.set_rng_state(state["torch_rng"])
        if self.balancer is not None and "balancer_norm_ema" in state:
            self.balancer.load_state_dict({"norm_ema": float(state["balancer_norm_ema"])})

    # --- main loop ----------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.config
        start = time.perf_counter()
        best_state = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
        while self.epoch < cfg.epochs:
            self.train_set.set_epoch(self.epoch)
            self.loss.epoch = self.epoch  # two-stage schedules (pseudo-masks)
            sums, steps = {"total": 0.0, "seg": 0.0, "cls": 0.0}, 0
            for batch in self._loader(self.train_set, shuffle=True):
                for k, v in self.train_step(batch).items():
                    sums[k] += v
                steps += 1
            self.scheduler.step()
            self.epoch += 1
            record = {"epoch": self.epoch, **{f"train_{k}": v / max(steps, 1) for k, v in sums.items()}}
            if self.val_set is not None:
                val = self.evaluate(self.val_set)
                record.update(val_loss=val["loss"], val_auc=val["auc"], val_dice=val["dice"])
                if val["loss"] < self.best_val:
                    self.best_val, self.bad_epochs = val["loss"], 0
                    best_state = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
                else:
                    self.bad_epochs += 1
                if not cfg.keep_best:
                    best_state = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
            else:
                best_state = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
            record["minutes"] = (time.perf_counter() - start) / 60
            self.history.append(record)
            if self.dist.is_main:
                self.log(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}))
            self.save_checkpoint()
            # every rank takes the same decision (same validation set, same clock budget agreed)
            if self.bad_epochs >= cfg.patience:
                self.log("early stop: validation loss has not improved")
                break
            if cfg.max_minutes and distributed.any_rank(record["minutes"] >= cfg.max_minutes, self.dist):
                self.log("stop: time budget reached")
                break
        self.network.load_state_dict(best_state)
        return self.history[-1] if self.history else {}

    def refit_descriptors(self) -> dict:
        """Refit the head's descriptor path on the training nodes as inference reads them."""
        if self.val_set is not None:
            before = self.evaluate(self.val_set)["auc"]
        nodes = NodePatchDataset(self.train_set.cache, self.pre, augment=False)
        inputs = ((self._inputs(batch, train=False), batch["slice_mm"].to(self.device),
                   batch["spacing_mm"].to(self.device))
                  for batch in self._loader(nodes, shuffle=False))
        head_inputs = collect_head_inputs(self.network, inputs)
        labels, soft, attributes = nodes.cache.labels, nodes.cache.soft_labels, nodes.cache.attributes
        self.calibration_nodes = None  # never an earlier refit's logits
        # held-out logits of the training nodes, for the temperature (from the head as trained)
        held_out = cross_fitted_logits(self.network.head, head_inputs, labels, nodes.cache.case_ids,
                                       seed=self.config.seed, soft_labels=soft, attributes=attributes)
        result = refit_descriptor_path(self.network.head, head_inputs, labels, soft_labels=soft, attributes=attributes)
        # a refined head rebuilds with its refine MLP only if the saved config says so
        refine = self.network.head.refine
        self.model_config.network.pop("head_refine_hidden", None)
        if refine is not None:
            self.model_config.network["head_refine_hidden"] = refine[0].out_features
        known = ~torch.isnan(held_out)
        if result["refit"] and known.any():
            self.calibration_nodes = (held_out[known].float(), labels[known])
            result["cross_fitted_auc"] = roc_auc(labels[known].numpy(), held_out[known].numpy())
        if self.val_set is not None and result["refit"]:
            result["val_auc_before_refit"] = before
        self.log(f"descriptor refit: {json.dumps(result)}")
        return {f"descriptor_{k}" if not k.startswith("val") else k: v for k, v in result.items()}

    def finish(self, card_text_fn=None) -> dict:
        """Calibrate on validation nodes and write the model folder. Returns validation metrics."""
        metrics = {}
        if self.config.descriptor_refit and refittable(self.network):
            metrics.update(self.refit_descriptors())
        logits, labels = [], []
        if self.val_set is not None:
            val = self.evaluate(self.val_set)
            known = ~torch.isnan(val["labels"])
            logits.append(val["logits"][known])
            labels.append(val["labels"][known])
            metrics.update({"val_auc": val["auc"], "val_dice": val["dice"], "val_nodes": int(len(self.val_set))})
        if self.calibration_nodes is not None:  # the refit's cross-fitted training nodes
            logits.append(self.calibration_nodes[0])
            labels.append(self.calibration_nodes[1])
        if logits:
            temperature = fit_temperature(torch.cat(logits), torch.cat(labels))
            self.model_config.temperature = temperature
            metrics.update({"temperature": temperature, "calibration_nodes": int(sum(len(t) for t in labels))})
        self.model_config.training["history"] = self.history
        self.model_config.training["world_size"] = self.dist.world_size
        self.model_config.training["validation"] = metrics
        card = card_text_fn(self.model_config, metrics) if card_text_fn else default_card(self.model_config, metrics)
        if self.dist.is_main:
            save_model(self.out_dir, self.model_config, self.network, card)
        distributed.barrier(self.dist)
        return metrics


def default_card(config: ModelConfig, metrics: dict) -> str:
    lines = [f"# Model card: {config.model_id}", "",
             "Trained with `lymphnode-mtl train`.", "", "## Validation", ""]
    lines += [f"- {k}: {v}" for k, v in metrics.items()] or ["- no validation split"]
    lines += ["", "## Intended use", "",
              "Not for clinical use unless validated locally by the hospital that trained it.", ""]
    return "\n".join(lines)
