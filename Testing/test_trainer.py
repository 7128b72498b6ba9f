"""The trainer on a tiny config: an epoch lowers the loss, resume gives the same next step, the
manifest path works end to end, and torchrun (gloo, 2 CPU processes) trains without code changes."""

import json
import os
import subprocess
import sys

import pytest
import torch
from LymphNodeMTLLib.commands.cli import main
from LymphNodeMTLLib.core.errors import InputError
from LymphNodeMTLLib.io.training_manifest import read_manifest
from LymphNodeMTLLib.network.model_store import load_model
from LymphNodeMTLLib.phantoms.dataset_writer import write_phantom_dataset
from LymphNodeMTLLib.training.trainer import CHECKPOINT, TrainConfig, Trainer

TINY = {"epochs": 1, "batch_size": 4, "lr": 3e-3, "val_fraction": 0.25, "seed": 3, "device": "cpu",
        "network": {"channels": [4, 8]}, "preprocessing": {"patch_size": 24, "patch_spacing_mm": 1.5},
        "mixed_precision": False, "model_id": "tiny-test"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    return write_phantom_dataset(root, n_cases=4, seed=11, nodes_per_case=(5, 6),
                                 field_of_view_mm=(80.0, 80.0, 60.0))


@pytest.fixture(scope="module")
def cached_trainer(manifest, tmp_path_factory):
    trainer = Trainer(TrainConfig(**TINY), tmp_path_factory.mktemp("model"), log=lambda *_: None)
    trainer.prepare(manifest)
    return trainer


def _train_loss(trainer) -> float:
    """Loss on the training nodes without augmentation (deterministic)."""
    from LymphNodeMTLLib.training.node_patch_dataset import NodePatchDataset

    return trainer.evaluate(NodePatchDataset(trainer.train_set.cache, trainer.pre, augment=False))["loss"]


def test_manifest_is_read_with_masks_and_labels(manifest):
    cases = read_manifest(manifest)
    assert len(cases) == 4
    assert all(c.label_map is not None and c.nodes for c in cases)
    assert all(n.label in (0, 1) and n.mask_value for c in cases for n in c.nodes)


def test_one_epoch_lowers_the_loss(cached_trainer):
    torch.manual_seed(0)
    before = _train_loss(cached_trainer)
    for _ in range(3):  # three passes over ~15 nodes: enough steps to move a tiny network
        cached_trainer.config.epochs = cached_trainer.epoch + 1
        cached_trainer.fit()
    after = _train_loss(cached_trainer)
    assert after < before
    assert (cached_trainer.out_dir / CHECKPOINT).is_file()


def test_resume_gives_the_same_next_step(cached_trainer, tmp_path):
    cached_trainer.save_checkpoint()
    batch = next(iter(cached_trainer._loader(cached_trainer.train_set, shuffle=False)))
    expected = cached_trainer.train_step(batch)
    expected_weights = {k: v.clone() for k, v in cached_trainer.network.state_dict().items()}

    resumed = Trainer(TrainConfig(**TINY), cached_trainer.out_dir, log=lambda *_: None)
    resumed.load_checkpoint(cached_trainer.out_dir / CHECKPOINT)
    resumed.set_cache(cached_trainer.cache)
    got = resumed.train_step(batch)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    for k, v in resumed.network.state_dict().items():
        torch.testing.assert_close(v, expected_weights[k], rtol=1e-5, atol=1e-6)


def test_train_command_writes_a_loadable_calibrated_model(manifest, tmp_path, capsys):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "model"
    assert main(["train", "--manifest", str(manifest), "--out", str(out), "--config", str(config)]) == 0
    loaded = load_model(out)
    assert loaded.config.model_id == "tiny-test"
    assert loaded.config.preprocessing.patch_size == 24
    assert loaded.config.temperature > 0
    assert "validation" in loaded.config.training
    # ~15 training nodes hold too few of each class for the descriptor refit: it says so
    assert loaded.config.training["validation"]["descriptor_refit"] is False


def test_torchrun_two_cpu_processes(manifest, tmp_path):
    """DistributedDataParallel on gloo: the same `train` command under torchrun."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "ddp-model"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "LymphNodeMTLLib.commands.cli", "train", "--manifest", str(manifest), "--out", str(out),
           "--config", str(config)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = load_model(out)
    assert loaded.config.model_id == "tiny-test"
    assert loaded.config.training["world_size"] == 2
    assert proc.stdout.count('"epoch": 1') == 1  # only rank 0 logs


def test_init_from_starts_from_the_saved_weights_and_refuses_another_network(manifest, tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    source = tmp_path / "source"
    assert main(["train", "--manifest", str(manifest), "--out", str(source), "--config", str(config)]) == 0
    saved = load_model(source).network.state_dict()

    tuned = Trainer(TrainConfig(**{**TINY, "init_from": str(source)}), tmp_path / "tuned", log=lambda *_: None)
    for k, v in tuned.network.state_dict().items():
        torch.testing.assert_close(v, saved[k])
    provenance = tuned.model_config.training["initial_weights"]
    assert provenance["weights_sha256"] == load_model(source).weights_sha256
    assert len(provenance["history"]) == 1 and provenance["recipe"]["epochs"] == 1
    # a model tuned from a tuned model keeps the whole chain of sources
    tuned_config = tmp_path / "tuned.json"
    tuned_config.write_text(json.dumps({**TINY, "epochs": 0, "init_from": str(source)}))
    assert main(["train", "--manifest", str(manifest), "--out", str(tmp_path / "tuned"),
                 "--config", str(tuned_config)]) == 0
    again = Trainer(TrainConfig(**{**TINY, "init_from": str(tmp_path / "tuned")}), tmp_path / "again",
                    log=lambda *_: None).model_config.training["initial_weights"]
    assert again["weights_sha256"] == load_model(tmp_path / "tuned").weights_sha256
    assert again["initial_weights"]["weights_sha256"] == load_model(source).weights_sha256
    fresh = Trainer(TrainConfig(**TINY), tmp_path / "fresh", log=lambda *_: None)
    assert any(not torch.equal(v, saved[k]) for k, v in fresh.network.state_dict().items())

    with pytest.raises(InputError, match="network or preprocessing differ"):
        Trainer(TrainConfig(**{**TINY, "network": {"channels": [4, 8, 16]}, "init_from": str(source)}),
                tmp_path / "other", log=lambda *_: None)


def test_loader_workers_give_the_same_augmented_batches(cached_trainer):
    """Samples are seeded per index and epoch, so worker processes change speed, not data."""
    cached_trainer.config.num_workers = 0
    serial = next(iter(cached_trainer._loader(cached_trainer.train_set, shuffle=True)))
    cached_trainer.config.num_workers = 2
    try:
        parallel = next(iter(cached_trainer._loader(cached_trainer.train_set, shuffle=True)))
    finally:
        cached_trainer.config.num_workers = 0
    assert torch.equal(serial["index"], parallel["index"])
    torch.testing.assert_close(serial["image"], parallel["image"])
    assert torch.equal(serial["mask"], parallel["mask"])


def test_patch_caches_concatenate_in_order_and_refuse_other_margins(cached_trainer):
    from LymphNodeMTLLib.training.node_patch_dataset import PatchCache

    cache = cached_trainer.cache
    n = len(cache)
    joined = PatchCache.concatenate([cache.subset(range(0, 3)), cache.subset(range(3, n))])
    assert joined.node_ids == cache.node_ids and joined.case_ids == cache.case_ids
    assert torch.equal(joined.images, cache.images) and torch.equal(joined.masks, cache.masks)
    assert torch.equal(joined.has_mask, cache.has_mask)
    torch.testing.assert_close(joined.labels, cache.labels, equal_nan=True)
    other = cache.subset([0])
    other.margin += 1
    with pytest.raises(ValueError, match="margins"):
        PatchCache.concatenate([cache, other])


def test_descriptor_refit_rewrites_the_head_from_inference_time_inputs(cached_trainer, monkeypatch):
    import LymphNodeMTLLib.training.descriptor_refit as refit

    monkeypatch.setattr(refit, "MIN_NODES_PER_CLASS", 1)  # the tiny data set has a handful of each class
    head = cached_trainer.network.head
    wide_before = head.wide.weight.detach().clone()
    result = cached_trainer.refit_descriptors()
    assert result["descriptor_refit"] is True
    assert result["descriptor_nodes"] == int((~torch.isnan(cached_trainer.train_set.cache.labels)).sum())
    assert result["descriptor_train_loss_after"] <= result["descriptor_train_loss_before"] + 1e-9
    assert "val_auc_before_refit" in result
    assert not torch.equal(head.wide.weight, wide_before)
    # the refit leaves held-out logits of the training nodes for the temperature
    logits, labels = cached_trainer.calibration_nodes
    assert len(logits) == len(labels) and torch.isfinite(logits).all() and not torch.isnan(labels).any()
    assert 0 < len(labels) <= result["descriptor_nodes"]


def test_temperature_is_fitted_on_validation_and_cross_fitted_training_nodes(cached_trainer, monkeypatch):
    import LymphNodeMTLLib.training.descriptor_refit as refit

    monkeypatch.setattr(refit, "MIN_NODES_PER_CLASS", 1)
    metrics = cached_trainer.finish()
    val_labelled = int((~torch.isnan(cached_trainer.val_set.cache.labels)).sum())
    assert metrics["calibration_nodes"] == val_labelled + len(cached_trainer.calibration_nodes[1])
    assert metrics["calibration_nodes"] > val_labelled
    saved = load_model(cached_trainer.out_dir)
    assert saved.config.temperature == pytest.approx(metrics["temperature"])


def test_soft_labels_refit_a_refine_mlp_that_the_saved_model_rebuilds(manifest, tmp_path, monkeypatch):
    """The phantom manifest carries P as soft labels: the refit fits the refine MLP, the saved
    config names its width, and the loaded model gives the trainer's own logits."""
    import LymphNodeMTLLib.training.descriptor_refit as refit
    from LymphNodeMTLLib.training.node_patch_dataset import NodePatchDataset

    monkeypatch.setattr(refit, "MIN_SOFT_NODES", 5)  # the tiny data set has about fifteen training nodes
    monkeypatch.setattr(refit, "REFINE_STEPS", 200)
    trainer = Trainer(TrainConfig(**{**TINY, "epochs": 0}), tmp_path / "m", log=lambda *_: None)
    trainer.prepare(manifest)
    assert trainer.cache.soft_labels is not None and not torch.isnan(trainer.cache.soft_labels).any()
    metrics = trainer.finish()
    assert metrics["descriptor_kind"] == "soft-label MLP"
    assert metrics["calibration_nodes"] > int((~torch.isnan(trainer.val_set.cache.labels)).sum())
    saved = load_model(tmp_path / "m")
    width = saved.config.network["head_refine_hidden"]
    assert width == trainer.network.head.refine[0].out_features
    val = NodePatchDataset(trainer.val_set.cache, trainer.pre, augment=False)
    x = trainer._inputs(next(iter(trainer._loader(val, shuffle=False))), train=False)
    with torch.no_grad():
        torch.testing.assert_close(saved.network(x).metastasis_logit,
                                   trainer.network.eval()(x).metastasis_logit)
    # fine-tuning from the refined model starts from its deep + wide head; its own refit refits
    again = Trainer(TrainConfig(**{**TINY, "epochs": 0, "init_from": str(tmp_path / "m")}), tmp_path / "again",
                    log=lambda *_: None)
    assert again.network.head.refine is None and "head_refine_hidden" not in again.model_config.network
    torch.testing.assert_close(again.network.head.wide.weight, saved.network.head.wide.weight)
