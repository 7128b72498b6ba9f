"""Evaluation metrics against hand-computed values, and the evaluate command's report."""

import json

import numpy as np
import pytest
from LymphNodeMTLLib.commands.cli import main
from LymphNodeMTLLib.core.classification_metrics import expected_calibration_error, roc_auc
from LymphNodeMTLLib.evaluation.evaluator import (
    NodeScore,
    binary_metrics,
    bootstrap_ci,
    slice_stratum,
    summarise,
    summarise_by_slice_thickness,
)
from LymphNodeMTLLib.core.mask_dice import dice_score
from LymphNodeMTLLib.evaluation.mask_overlap import hd95_mm
from LymphNodeMTLLib.phantoms.dataset_writer import write_phantom_dataset

LABELS = np.array([1, 0, 1, 1, 0, 0, 1, 0])
PROBS = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])


def test_auc_by_hand():
    # positives at ranks (descending) 1,3,4,7; count negatives below each positive:
    # 0.9 -> 4, 0.7 -> 3, 0.6 -> 3, 0.2 -> 1  => 11 of 16 pairs
    assert roc_auc(LABELS, PROBS) == pytest.approx(11 / 16)
    assert roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)  # ties count one half


def test_accuracy_sensitivity_specificity_by_hand():
    m = binary_metrics(LABELS, PROBS >= 0.5)
    # predicted positive: 0.9(1) 0.8(0) 0.7(1) 0.6(1) -> TP 3, FP 1; negatives: 0.4(0) 0.3(0) 0.2(1) 0.1(0) -> TN 3, FN 1
    assert m == pytest.approx({"accuracy": 6 / 8, "sensitivity": 3 / 4, "specificity": 3 / 4})


def test_ece_by_hand():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.95, 0.95, 0.15, 0.15])
    # bin 9: mean p .95, rate .5 -> |.45| * 2/4 ; bin 1: mean p .15, rate .5 -> |.35| * 2/4
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * 0.45 + 0.5 * 0.35)


def test_bootstrap_ci_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.clip(y * 0.3 + rng.uniform(0, 0.7, 400), 0, 1)
    lo, hi = bootstrap_ci(roc_auc, y, p, n_boot=300)
    assert lo < roc_auc(y, p) < hi and hi - lo < 0.15


def test_dice_and_hd95_by_hand():
    a = np.zeros((1, 10, 10), bool)
    b = np.zeros((1, 10, 10), bool)
    a[0, 2:6, 2:6] = True  # 16 voxels
    b[0, 2:6, 4:8] = True  # 16 voxels, 8 shared
    assert dice_score(a, b) == pytest.approx(0.5)
    # the boxes are shifted by 2 voxels of 0.5 mm along the last axis: every surface distance <= 1 mm
    assert hd95_mm(a, b, (1.0, 1.0, 0.5)) == pytest.approx(1.0, abs=1e-6)


def test_summary_includes_the_size_rule_and_bayes_ceiling():
    scores = [NodeScore("c", str(i), int(y), float(p), short_axis_mm=12.0 if p > 0.5 else 6.0,
                        true_short_axis_mm=11.0 if y else 7.0, dice=0.9, hd95_mm=1.0, true_probability=float(p))
              for i, (y, p) in enumerate(zip(LABELS, PROBS))]
    s = summarise(scores, n_boot=50)
    assert s["auc"] == pytest.approx(11 / 16)
    assert s["bayes_ceiling_auc"] == pytest.approx(11 / 16)
    assert s["short_axis_rule_true_mask"]["sensitivity"] == pytest.approx(1.0)
    assert s["short_axis_rule_predicted_mask"]["sensitivity"] == pytest.approx(0.75)
    assert s["dice_mean"] == pytest.approx(0.9)


def test_figures_per_slice_thickness_stratum_by_hand():
    assert [slice_stratum(v) for v in (0.6, 1.5, 1.51, 3.0, 3.01, 5.0)] == [
        "slices 0-1.5 mm", "slices 0-1.5 mm", "slices 1.5-3 mm", "slices 1.5-3 mm", "slices > 3 mm", "slices > 3 mm"]
    thickness = [5.0, 1.0, 1.0, 5.0, 1.0, 5.0, 1.0, 5.0]
    scores = [NodeScore("c", str(i), int(y), float(p), short_axis_mm=8.0, slice_mm=t)
              for i, (y, p, t) in enumerate(zip(LABELS, PROBS, thickness))]
    scores.append(NodeScore("c", "no-ct", 1, 0.5, 8.0))  # unknown thickness: in no stratum
    strata = summarise_by_slice_thickness(scores, n_boot=20)
    assert list(strata) == ["slices 0-1.5 mm", "slices > 3 mm"]  # ascending; the empty middle one left out
    thin = np.array(thickness) == 1.0
    # thin: labels 0,1,0,1 at 0.8,0.7,0.4,0.2 -> 1 of 4 pairs ordered; thick: 1,1,0,0 at 0.9,0.6,0.3,0.1 -> all
    assert strata["slices 0-1.5 mm"]["auc"] == pytest.approx(roc_auc(LABELS[thin], PROBS[thin])) == pytest.approx(0.25)
    assert strata["slices > 3 mm"]["auc"] == pytest.approx(1.0)
    assert strata["slices 0-1.5 mm"]["nodes"] == 4 and strata["slices > 3 mm"]["nodes"] == 4


def test_evaluate_command_writes_the_report(tmp_path, capsys):
    manifest = write_phantom_dataset(tmp_path / "set", n_cases=2, seed=99, nodes_per_case=(4, 5),
                                     field_of_view_mm=(80.0, 80.0, 60.0))
    out = tmp_path / "report"
    assert main(["evaluate", "--manifest", str(manifest), "--out", str(out), "--device", "cpu"]) == 0
    for name in ("predictions.csv", "report.json", "report.md", "roc.png", "calibration.png", "dice.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["nodes"] >= 8
    assert 0.0 <= report["dice_mean"] <= 1.0
    assert 0.0 <= report["bayes_ceiling_auc"] <= 1.0
    assert "short_axis_rule_true_mask" in report
    assert "auc" in (out / "report.md").read_text()
    # each node in its CT's slice-thickness stratum, in the report and the predictions
    import csv

    import SimpleITK as sitk
    from LymphNodeMTLLib.io.training_manifest import read_manifest

    slices = {c.case_id: max(sitk.ReadImage(str(c.image)).GetSpacing()) for c in read_manifest(manifest)}
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert all(float(r["slice_mm"]) == pytest.approx(slices[r["case_id"]], abs=0.01) for r in rows)
    strata = report["by_slice_thickness"]
    assert sum(s["nodes"] for s in strata.values()) == report["nodes"]
    assert set(strata) == {slice_stratum(v) for v in slices.values()}
    assert "By slice thickness" in (out / "report.md").read_text()


def test_size_and_contact_strata_by_hand():
    from LymphNodeMTLLib.evaluation.evaluator import contact_stratum, size_stratum, summarise_by_contact, summarise_by_size

    assert [size_stratum(v) for v in (5.0, 10.0, 15.0, 25.0, 45.0)] == [
        "short axis 0-10 mm", "short axis 0-10 mm", "short axis 10-20 mm", "short axis 20-30 mm", "short axis > 30 mm"]
    assert [contact_stratum(v) for v in (0.0, 0.1, 0.2, 0.5)] == ["contact 0-10 %", "contact 0-10 %", "contact 10-30 %",
                                                                  "contact > 30 %"]
    sizes = [5.0, 15.0, 5.0, 15.0, 5.0, 15.0, 5.0, 15.0]
    contact = [0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.5, 0.5]
    dice = [0.9, 0.8, 0.2, 0.4, 0.9, 0.8, 0.0, 0.4]
    scores = [NodeScore("c", str(i), int(y), float(p), 8.0, true_short_axis_mm=s, contact_fraction=c, dice=d,
                        empty_mask=d == 0.0)
              for i, (y, p, s, c, d) in enumerate(zip(LABELS, PROBS, sizes, contact, dice))]
    by_contact = summarise_by_contact(scores, n_boot=20)
    assert list(by_contact) == ["contact 0-10 %", "contact > 30 %"]
    assert by_contact["contact 0-10 %"]["dice_mean"] == pytest.approx(0.85)
    assert by_contact["contact > 30 %"]["dice_mean"] == pytest.approx(0.25)
    assert by_contact["contact > 30 %"]["empty_masks"] == 1 and by_contact["contact 0-10 %"]["empty_masks"] == 0
    by_size = summarise_by_size(scores, n_boot=20)
    small = np.array(sizes) == 5.0
    assert by_size["short axis 0-10 mm"]["auc"] == pytest.approx(roc_auc(LABELS[small], PROBS[small]))


def test_contact_fraction_by_hand():
    from LymphNodeMTLLib.evaluation.evaluator import contact_fraction

    image = np.full((30, 30, 30), -100.0, dtype=np.float32)  # fat
    node = np.zeros(image.shape, bool)
    node[10:20, 10:20, 10:20] = True
    image[node] = 45.0
    assert contact_fraction(node, image, (1.0, 1.0, 1.0)) == 0.0  # in fat all round
    image[:, :, 20:] = 50.0  # a soft-tissue slab against one face of six
    share = contact_fraction(node, image, (1.0, 1.0, 1.0))
    assert 0.1 < share < 0.35


def test_evaluate_without_labels_reports_dice_and_empty_masks_not_auc(tmp_path):
    import csv

    from LymphNodeMTLLib.evaluation.report import markdown

    manifest = write_phantom_dataset(tmp_path / "set", n_cases=1, seed=98, nodes_per_case=(3, 3),
                                     field_of_view_mm=(80.0, 80.0, 60.0))
    for nodes_csv in (tmp_path / "set").glob("*/nodes.csv"):  # a real-lesion-style manifest: masks, no labels
        rows = list(csv.DictReader(open(nodes_csv)))
        with open(nodes_csv, "w", newline="") as f:
            writer = csv.DictWriter(f, ["id", "r", "a", "s", "mask_value"], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        (nodes_csv.parent / "truth.csv").unlink()
    out = tmp_path / "report"
    assert main(["evaluate", "--manifest", str(manifest), "--out", str(out), "--device", "cpu"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["labelled_nodes"] == 0 and report["nodes"] == 3
    assert "auc" not in report and "ece" not in report
    assert 0.0 <= report["dice_mean"] <= 1.0
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert all(r["label"] == "" for r in rows)
    assert report["empty_masks"] == sum(r["empty_mask"] == "1" for r in rows)
    text = (out / "report.md").read_text()
    assert "not computed: the manifest has no labels" in text and "empty_masks" in text
    assert not (out / "roc.png").exists()
    assert markdown(report) == text
