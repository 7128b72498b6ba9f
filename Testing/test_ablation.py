"""`lymphnode-mtl ablate` on a tiny budget: every variant trained on the same cached nodes, scored on
a test manifest, one table (markdown + JSON) with the command, budget and inapplicable cells blank."""

import json
import math

import pytest
import torch
from LymphNodeMTLLib.commands.cli import main
from LymphNodeMTLLib.evaluation.ablation.ablation import hide_annotations
from LymphNodeMTLLib.evaluation.ablation.scoring import paired_auc_difference, verdict
from LymphNodeMTLLib.evaluation.ablation.variants import DEFAULT_VARIANTS, VARIANTS, choose_best, combine_variants
from LymphNodeMTLLib.network.model_store import load_model
from LymphNodeMTLLib.phantoms.dataset_writer import write_phantom_dataset

CONFIG = {"batch_size": 4, "lr": 3e-3, "val_fraction": 0.25, "seed": 3, "device": "cpu",
          "network": {"channels": [4, 8]}, "preprocessing": {"patch_size": 16, "patch_spacing_mm": 2.0},
          "mixed_precision": False, "model_id": "unused"}


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation-data")
    fov = (70.0, 70.0, 50.0)
    train = write_phantom_dataset(root / "train", n_cases=4, seed=11, nodes_per_case=(4, 5), field_of_view_mm=fov)
    test = write_phantom_dataset(root / "test", n_cases=1, seed=99, nodes_per_case=(5, 6), field_of_view_mm=fov)
    return train, test


@pytest.fixture(scope="module")
def ablation_run(manifests, tmp_path_factory):
    train, test = manifests
    out = tmp_path_factory.mktemp("ablation")
    config = out / "config.json"
    config.write_text(json.dumps(CONFIG))
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is fastest and leaves the other core alone
    try:
        rc = main(["ablate", "--manifest", str(train), "--test-manifest", str(test), "--out", str(out / "run"),
                   "--config", str(config), "--epochs", "2", "--budget-minutes", "0.5",
                   "--mask-fraction", "0.75", "--bootstrap", "20"])
    finally:
        torch.set_num_threads(before)
    assert rc == 0
    return out / "run"


def test_table_has_every_variant_with_its_metrics(ablation_run):
    result = json.loads((ablation_run / "ablation.json").read_text())
    names = [v["name"] for v in result["variants"]]
    assert names[:7] == [n for n in DEFAULT_VARIANTS if n != "best"]
    assert result["budget_minutes_per_variant"] == 0.5 and result["max_epochs"] == 2
    assert result["training_nodes_with_mask"] < result["training_nodes"]  # --mask-fraction applied
    rows = {v["name"]: v for v in result["variants"]}
    for name, row in rows.items():
        test = row["test"]
        assert test["parameters"] > 0 and test["forward_ms_per_node"] > 0
        assert 1 <= row["epochs"] <= 2
        if name != "single_task_segmenter":
            assert test["auc"] is not None and len(test["auc_ci95"]) == 2
            for k in ("accuracy", "sensitivity", "specificity", "ece"):
                assert k in test
        if name != "single_task_classifier":
            assert test["dice_mean"] is not None
    # inapplicable cells are blank, not misleading numbers
    assert "auc" not in rows["single_task_segmenter"]["test"]
    assert "dice_mean" not in rows["single_task_classifier"]["test"]
    # components are compared with the base, paired, with a verdict
    for name in ("ma_mtln", "mt_ids", "sd_mdanet", "la_net", "single_task_classifier"):
        assert rows[name]["verdict"] in ("helps", "hurts", "no clear difference", "n/a")
    assert rows["sd_mdanet"]["teachers"] == ["base", "single_task_classifier"]
    assert "bayes_ceiling_auc" in result["baselines"]
    assert "short_axis_rule_true_mask" in result["baselines"]
    # "best" is either trained, an alias of one component, or explained in the notes
    assert "best" in names or any("best combination" in n for n in result["notes"])


def test_markdown_states_command_and_budget(ablation_run):
    md = (ablation_run / "ablation.md").read_text()
    assert "lymphnode-mtl ablate --manifest" in md and "--budget-minutes 0.5" in md
    assert "Budget per variant: 0.5 min" in md
    assert "| Variant | AUC | Accuracy | Sensitivity | Specificity | Dice | ECE | Params | ms/node |" in md
    assert md.count("\n| ") >= 1 + 7


def test_variant_model_folders_load(ablation_run):
    for name in ("base", "ma_mtln", "la_net"):
        loaded = load_model(ablation_run / "models" / name)
        assert loaded.config.model_id == f"ablation-{name}"
        assert not (ablation_run / "models" / name / "checkpoint.pt").exists()


def test_unknown_variant_is_one_line_error(manifests, tmp_path, capsys):
    train, test = manifests
    rc = main(["ablate", "--manifest", str(train), "--test-manifest", str(test), "--out", str(tmp_path),
               "--variants", "base", "resnet"])
    assert rc == 2
    assert "unknown resnet" in capsys.readouterr().err


def test_best_uses_validation_auc_only():
    records = {"base": {"validation": {"val_auc": 0.70}},
               "ma_mtln": {"validation": {"val_auc": 0.72}}, "mt_ids": {"validation": {"val_auc": 0.65}},
               "la_net": {"validation": {"val_auc": 0.75}}}
    assert choose_best(records) == ["ma_mtln", "la_net"]
    assert choose_best({"base": {"validation": {"val_auc": 0.9}}, "la_net": {"validation": {"val_auc": 0.8}}}) is None
    best = combine_variants(["ma_mtln", "sd_mdanet", "la_net"])
    assert best.network["fusion"] == "ma_mtln" and best.network["head"] == "lesion_attention"
    assert best.train["loss"] == {"segmentation": "jaccard_focal", "mixed_lambda": 0.1}
    assert best.teachers == VARIANTS["sd_mdanet"].teachers


def test_paired_auc_difference_and_verdict():
    y = [0, 0, 1, 1, 0, 1, 0, 1] * 5
    good = [0.1, 0.2, 0.9, 0.8, 0.3, 0.7, 0.2, 0.95] * 5
    bad = [0.9, 0.2, 0.1, 0.8, 0.7, 0.3, 0.6, 0.4] * 5
    diff, ci = paired_auc_difference(y, good, bad, n_boot=200)
    assert diff > 0 and ci[0] > 0
    assert verdict(diff, ci) == "helps"
    assert verdict(-diff, (-ci[1], -ci[0])) == "hurts"
    assert verdict(0.01, (-0.02, 0.04)) == "no clear difference"
    same, ci_same = paired_auc_difference(y, good, good, n_boot=50)
    assert same == 0.0 and ci_same == (0.0, 0.0)
    assert verdict(math.nan, (0.0, 0.0)) == "n/a"


def test_hidden_annotations_are_reproducible():
    from LymphNodeMTLLib.training.node_patch_dataset import PatchCache

    n = 200
    cache = PatchCache(torch.zeros(n, 1, 2, 2, 2), torch.zeros(n, 1, 2, 2, 2), torch.ones(n),
                       torch.ones(n, dtype=torch.bool), [str(i) for i in range(n)], ["c"] * n, 0,
                       torch.full((n,), 0.7))
    a = hide_annotations(cache, 0.5, 0.8, seed=1)
    b = hide_annotations(cache, 0.5, 0.8, seed=1)
    assert torch.equal(a.has_mask, b.has_mask) and torch.equal(a.labels.isnan(), b.labels.isnan())
    assert 60 < int(a.has_mask.sum()) < 140 and 140 < int((~a.labels.isnan()).sum()) < 190
    assert torch.equal(a.soft_labels.isnan(), a.labels.isnan())  # a hidden label hides its probability
    assert bool(cache.has_mask.all()) and not cache.soft_labels.isnan().any()  # the original is untouched


def test_resume_reuses_variants_trained_with_the_same_config_only(manifests, ablation_run, monkeypatch):
    from LymphNodeMTLLib.evaluation.ablation.variant_training import finished_variant
    from LymphNodeMTLLib.evaluation.ablation.variants import variant_config
    from LymphNodeMTLLib.training.trainer import TrainConfig, Trainer

    train, test = manifests
    config = ablation_run.parent / "config.json"
    base = TrainConfig(**{**CONFIG, "epochs": 2, "max_minutes": 0.5})
    folder = ablation_run / "models" / "base"
    assert finished_variant(folder, variant_config(base, VARIANTS["base"], [])) is not None
    other = TrainConfig(**{**CONFIG, "epochs": 3, "max_minutes": 0.5})
    assert finished_variant(folder, variant_config(other, VARIANTS["base"], [])) is None

    monkeypatch.setattr(Trainer, "fit", lambda self: pytest.fail("retrained a finished variant"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(["ablate", "--manifest", str(train), "--test-manifest", str(test), "--out", str(ablation_run),
                   "--config", str(config), "--epochs", "2", "--budget-minutes", "0.5",
                   "--mask-fraction", "0.75", "--bootstrap", "20", "--variants", "single_task_classifier", "base",
                   "--resume"])
    finally:
        torch.set_num_threads(before)
    assert rc == 0
    result = json.loads((ablation_run / "ablation.json").read_text())
    assert [v["name"] for v in result["variants"]] == ["single_task_classifier", "base"]
    assert all(v["reused"] and v["epochs"] >= 1 and "auc" in v["test"] for v in result["variants"])
    assert "--resume" in result["command"]


def test_resume_ignores_options_that_were_off_and_loader_workers(ablation_run, tmp_path):
    """A folder saved by a version with an extra (off) option, or without a newer one, or trained
    with other data-loader workers is the same variant; an option that was on is not."""
    import shutil

    from LymphNodeMTLLib.evaluation.ablation.variant_training import finished_variant
    from LymphNodeMTLLib.evaluation.ablation.variants import variant_config
    from LymphNodeMTLLib.training.trainer import TrainConfig

    wanted = variant_config(TrainConfig(**{**CONFIG, "epochs": 2, "max_minutes": 0.5}), VARIANTS["base"], [])
    folder = tmp_path / "base"
    shutil.copytree(ablation_run / "models" / "base", folder)
    config_file = folder / "config.json"
    original = json.loads(config_file.read_text())

    def saved_with(**changes):
        data = json.loads(json.dumps(original))
        for key, value in changes.items():
            if value is _DROP:
                data["training"].pop(key)
            else:
                data["training"][key] = value
        config_file.write_text(json.dumps(data))
        # the checksum file covers the config: record the edit, as a version that wrote it would
        from LymphNodeMTLLib.network.model_store import record_checksums

        record_checksums(folder)
        return finished_variant(folder, wanted)

    assert saved_with(retired_option=0, init_from=_DROP, num_workers=7) is not None
    assert saved_with(retired_option=3) is None
    assert saved_with(lr=original["training"]["lr"] * 2) is None


_DROP = object()


def test_an_earlier_table_is_refused_without_resume_or_overwrite(manifests, tmp_path, capsys):
    train, test = manifests
    (tmp_path / "ablation.md").write_text("my annotated table")
    rc = main(["ablate", "--manifest", str(train), "--test-manifest", str(test), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "already holds an ablation" in err[0] and "--overwrite" in err[0]
    assert (tmp_path / "ablation.md").read_text() == "my annotated table"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ablation.md"]


def test_a_second_ablation_into_a_locked_folder_is_refused(manifests, tmp_path, capsys):
    from LymphNodeMTLLib.outputs.output_folder import FolderLock

    train, test = manifests
    lock = FolderLock(tmp_path)
    lock.acquire()
    try:
        rc = main(["ablate", "--manifest", str(train), "--test-manifest", str(test), "--out", str(tmp_path)])
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert rc == 2 and "another lymphnode-mtl run is writing" in err
    assert not (tmp_path / "models").exists()
