"""evaluate --interactive K: clicks simulated by the training rule on the mask shown, each refining
the node through the engine's refine; Dice after 0..K clicks, NoC, line and box Dice, per stratum."""

import csv
import json

import numpy as np
import pytest
from LymphNodeMTLLib.commands.cli import main
from LymphNodeMTLLib.evaluation.interactive_scoring import InteractiveScore, summarise_interactive
from LymphNodeMTLLib.phantoms.dataset_writer import write_phantom_dataset


def test_noc_is_the_first_click_count_reaching_the_dice_and_k_plus_one_when_none_does():
    score = InteractiveScore([0.5, 0.86, 0.91, 0.92])
    assert score.clicks_to_reach(0.85) == 1 and score.clicks_to_reach(0.90) == 2
    assert InteractiveScore([0.2, 0.3, 0.4]).clicks_to_reach(0.85) == 3
    assert InteractiveScore([0.95, 0.95]).clicks_to_reach(0.90) == 0
    summary = summarise_interactive([InteractiveScore([0.5, 0.9], 0.8, 0.7), InteractiveScore([0.7, 0.7], 0.6, float("nan"))])
    assert summary["dice_after_clicks"] == pytest.approx([0.6, 0.8])
    assert summary["noc85"] == pytest.approx((1 + 2) / 2) and summary["reached_85"] == pytest.approx(0.5)
    assert summary["line_dice"] == pytest.approx(0.7) and summary["box_dice"] == pytest.approx(0.7)


def test_evaluate_interactive_reports_clicks_lines_and_boxes(tmp_path, capsys):
    manifest = write_phantom_dataset(tmp_path / "set", n_cases=1, seed=97, nodes_per_case=(4, 4),
                                     field_of_view_mm=(80.0, 80.0, 60.0))
    out = tmp_path / "report"
    assert main(["evaluate", "--manifest", str(manifest), "--out", str(out), "--device", "cpu",
                 "--interactive", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    interactive = report["interactive"]
    assert interactive["nodes"] == report["nodes"] == 4
    curve = interactive["dice_after_clicks"]
    assert len(curve) == 3 and curve[0] == pytest.approx(report["dice_mean"])  # 0 clicks: the predicted masks
    assert 0 <= interactive["noc85"] <= 3 and 0 <= interactive["noc90"] <= 3
    assert 0.0 <= interactive["line_dice"] <= 1.0 and 0.0 <= interactive["box_dice"] <= 1.0
    assert all("interactive" in s for s in report["by_size"].values())
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert {"dice_after_0_clicks", "dice_after_2_clicks", "noc85", "noc90", "line_dice", "box_dice"} <= set(rows[0])
    assert np.mean([float(r["dice_after_0_clicks"]) for r in rows]) == pytest.approx(curve[0], abs=1e-3)
    assert "NoC@85" in (out / "report.md").read_text()
    assert "NoC@85" in capsys.readouterr().out.replace("NoC@85 ", "NoC@85")


def test_evaluate_interactive_refuses_a_model_that_reads_seeds_only_before_writing(tmp_path, capsys):
    from LymphNodeMTLLib.network.model_store import ModelConfig, save_model
    from LymphNodeMTLLib.network.network_config import NetworkConfig
    from LymphNodeMTLLib.network.node_network import MultiTaskNodeNet
    from LymphNodeMTLLib.preprocessing.network_input import PreprocessingConfig

    config = ModelConfig("seeds-only", network={"channels": [4, 8]}, preprocessing=PreprocessingConfig(patch_size=16))
    save_model(tmp_path / "m", config, MultiTaskNodeNet(NetworkConfig(channels=(4, 8))), "a test model")
    manifest = write_phantom_dataset(tmp_path / "set", n_cases=1, seed=97, nodes_per_case=(1, 1),
                                     field_of_view_mm=(60.0, 60.0, 40.0))
    out = tmp_path / "report"
    assert main(["evaluate", "--manifest", str(manifest), "--out", str(out), "--device", "cpu",
                 "--model", str(tmp_path / "m"), "--interactive", "2"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reads seeds only" in err[0]
    assert not out.exists()
