"""A status for every node: seeds off soft tissue, empty masks, masks cut by the CT, in predict and
in re-classification; a node without a usable mask has no probability and no label in any output;
on real lesions no empty mask passes without a status saying so."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from LymphNodeMTLLib.core import node_status
from LymphNodeMTLLib.core.case import Case, Seed
from LymphNodeMTLLib.core.geometry import VolumeGeometry
from LymphNodeMTLLib.core.node_result import NodeResult
from LymphNodeMTLLib.core.segment_tags import TAG_PREDICTED_LABEL, TAG_STATUS, segment_tags
from LymphNodeMTLLib.inference.engine import NodeEngine
from LymphNodeMTLLib.inference.node_status_rules import SOFT_TISSUE_HU, apply_status
from LymphNodeMTLLib.io.seed_reader import read_seeds
from LymphNodeMTLLib.io.volume_reader import read_volume
from LymphNodeMTLLib.outputs.case_report import NO_VALUE, probability_text, report_order, status_text
from LymphNodeMTLLib.outputs.dicom_seg_writer import segment_description_text
from LymphNodeMTLLib.outputs.results_table import write_results_csv
from LymphNodeMTLLib.outputs.status_notice import status_notice_lines
from results_csv import read_results_csv

REAL_LESIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_lesions"
if not REAL_LESIONS.is_dir():
    REAL_LESIONS = Path("/work/shared/data/real_lesions")
SPACING = (0.8, 0.8, 1.5)
SHAPE_KJI = (48, 80, 80)


def _grid():
    geometry = VolumeGeometry.from_lps((0, 0, 0), SPACING, np.eye(3).flatten(), SHAPE_KJI)
    k, j, i = np.meshgrid(*[np.arange(n) for n in SHAPE_KJI], indexing="ij")
    ras = geometry.ijk_to_ras_points(np.stack([i, j, k], -1).reshape(-1, 3)).reshape(*SHAPE_KJI, 3)
    return geometry, ras


@pytest.fixture(scope="module")
def engine():
    return NodeEngine(device="cpu")


@pytest.fixture(scope="module")
def case_and_results(engine):
    """Fat with a 14 mm node, a ball of air (lung) and a ball of bone; seeds on each and in fat."""
    geometry, ras = _grid()
    centre = ras[24, 40, 40]
    image = np.full(SHAPE_KJI, -100.0, np.float32)
    places = {"node": centre, "air": centre + [22.0, 0, 0], "bone": centre + [-22.0, 0, 0],
              "fat": centre + [0, 20.0, 0]}
    for name, hu in (("node", 45.0), ("air", -850.0), ("bone", 700.0)):
        image[np.linalg.norm(ras - places[name], axis=-1) <= 7.0] = hu
    image += np.random.default_rng(5).normal(0, 12, SHAPE_KJI).astype(np.float32)
    case = Case(image, geometry, [Seed(name, tuple(p)) for name, p in places.items()])
    return case, {r.node_id: r for r in engine.predict(case)}


def test_each_node_gets_the_status_of_its_seed(case_and_results):
    _, results = case_and_results
    assert results["node"].status == node_status.OK and results["node"].mask.any()
    assert results["air"].status == node_status.SEED_NOT_IN_SOFT_TISSUE
    assert results["bone"].status == node_status.SEED_NOT_IN_SOFT_TISSUE
    assert results["fat"].status == node_status.EMPTY_MASK
    assert SOFT_TISSUE_HU[0] < -100.0 < SOFT_TISSUE_HU[1]  # fat is soft tissue: a fatty hilum


def test_no_usable_mask_means_no_probability_and_no_label(case_and_results):
    _, results = case_and_results
    assert 0.0 <= results["node"].probability <= 1.0 and results["node"].predicted_label in (0, 1)
    for name in ("air", "bone", "fat"):
        r = results[name]
        assert math.isnan(r.probability) and r.predicted_label == -1, name
        assert math.isfinite(r.network_probability)  # kept aside, for evaluation


def test_outputs_show_the_status_and_no_number_for_unusable_nodes(case_and_results, tmp_path):
    _, results = case_and_results
    ordered = list(results.values())
    path = write_results_csv(tmp_path / "nodes.csv", ordered)
    with open(path, newline="") as f:
        raw = {row["id"]: row for row in csv.DictReader(f)}
    assert raw["fat"]["status"] == "empty_mask" and raw["fat"]["probability"] == "" == raw["fat"]["predicted_label"]
    assert raw["node"]["status"] == "ok" and raw["node"]["predicted_label"] in ("0", "1")
    back = {row["id"]: row for row in read_results_csv(path)}
    assert back["fat"]["predicted_label"] == -1 and back["air"]["status"] == "seed_not_in_soft_tissue"
    assert back["node"]["field_of_view_mm"] == 48.0

    tags = segment_tags(results["bone"])
    assert tags[TAG_STATUS] == "seed_not_in_soft_tissue" and tags[TAG_PREDICTED_LABEL] == ""
    assert segment_description_text(results["fat"].probability, True, results["fat"].status) == (
        "REVIEW: empty_mask, metastasis probability unknown")
    assert probability_text(results["fat"]) == NO_VALUE
    assert status_text(results["fat"]).startswith("REVIEW: no mask")
    assert status_text(results["node"]) == "ok"
    # review first: every node that is not ok comes before the ok one
    assert [r.node_id for r in report_order(ordered)][-1] == "node"
    lines = status_notice_lines(ordered)
    assert len(lines) == 1 and "fat (empty_mask)" in lines[0] and "node (" not in lines[0]


def test_reclassification_statuses(engine, case_and_results):
    case, results = case_and_results
    node = results["node"]
    empty = NodeResult("edited-empty", node.seed_ras, node.bbox_start_kji, node.bbox_stop_kji,
                       np.zeros_like(node.mask))
    # a mask drawn up to the CT's last slice: cut by the CT's own edge
    stop = tuple(node.bbox_stop_kji)
    to_edge = NodeResult("edited-edge", node.seed_ras, node.bbox_start_kji, (SHAPE_KJI[0], *stop[1:]),
                         np.ones((SHAPE_KJI[0] - node.bbox_start_kji[0], *node.mask.shape[1:]), bool))
    updated = {r.node_id: r for r in engine.classify_masks(case, [node, empty, to_edge])}
    assert updated["node"].status == node_status.OK and updated["node"].field_of_view_mm == 48.0
    assert updated["node"].probability == pytest.approx(node.probability, abs=0.05)
    assert updated["edited-empty"].status == node_status.EMPTY_MASK
    assert updated["edited-edge"].status == node_status.TOUCHES_FIELD_OF_VIEW
    for name in ("edited-empty", "edited-edge"):
        assert math.isnan(updated[name].probability) and updated[name].predicted_label == -1
    np.testing.assert_array_equal(updated["edited-edge"].mask, to_edge.mask)  # never cut or zoomed


def test_reclassifying_a_large_drawn_mask_picks_a_field_of_view_that_holds_it(engine):
    """A 50 mm-long drawn mask does not fit the 48 mm window clear of a voxel at its border:
    the head sees it through the next wider view the model declares, the mask itself unchanged."""
    geometry, ras = _grid()
    centre = ras[24, 40, 40]
    drawn = np.linalg.norm((ras - centre) / [25.0, 12.0, 12.0], axis=-1) <= 1.0
    image = np.where(drawn, 45.0, -100.0).astype(np.float32)
    idx = np.argwhere(drawn)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    given = NodeResult("big", tuple(centre), tuple(lo), tuple(hi), drawn[tuple(slice(a, b) for a, b in zip(lo, hi))])
    (updated,) = engine.classify_masks(Case(image, geometry, [Seed("big", tuple(centre))]), [given])
    size = engine.config.preprocessing.patch_size
    wider = [size * s for s in engine.zoom_spacings_mm if size * s > 48.0]
    assert updated.field_of_view_mm == wider[0] and updated.status == node_status.OK
    np.testing.assert_array_equal(updated.mask, given.mask)
    assert 0.0 <= updated.probability <= 1.0


def test_apply_status_keeps_the_probability_of_usable_masks():
    r = NodeResult("x", (0.0, 0.0, 0.0), (0, 0, 0), (1, 1, 1), np.ones((1, 1, 1), bool), probability=0.7,
                   predicted_label=1)
    apply_status(r, node_status.LOW_AGREEMENT)
    assert r.probability == 0.7 and r.predicted_label == 1
    apply_status(r, node_status.TOUCHES_FIELD_OF_VIEW)
    assert math.isnan(r.probability) and r.predicted_label == -1 and r.network_probability == 0.7


@pytest.mark.skipif(not REAL_LESIONS.is_dir(), reason=f"{REAL_LESIONS} is absent")
def test_real_lesions_have_no_silent_empty_mask(engine):
    cases = sorted(p for p in REAL_LESIONS.iterdir() if (p / "ct.nrrd").is_file())
    assert cases
    for folder in cases:
        image, geometry, _ = read_volume(folder / "ct.nrrd")
        case = Case(image.astype(np.float32), geometry, read_seeds(folder / "seeds.csv"))
        for r in engine.predict(case):
            assert r.status in node_status.ALL
            assert r.status != node_status.OK or not r.is_empty, folder.name
            if r.status not in node_status.HAS_USABLE_MASK:
                assert math.isnan(r.probability), folder.name
            assert r.field_of_view_mm in [engine.config.preprocessing.patch_size * s for s in engine.zoom_spacings_mm]


def test_a_mask_of_fat_only_is_no_node_but_a_fatty_hilum_is_part_of_one():
    from LymphNodeMTLLib.inference.node_status_rules import holds_only_fat

    rng = np.random.default_rng(2)
    image = rng.normal(-100.0, 12.0, (10, 10, 10)).astype(np.float32)  # fat
    mask = np.zeros((10, 10, 10), bool)
    mask[2:8, 2:8, 2:8] = True
    blob = NodeResult("blob", (0.0, 0.0, 0.0), (0, 0, 0), (10, 10, 10), mask)
    assert holds_only_fat(blob, image)
    node = image.copy()
    node[2:8, 2:8, 4:8] = rng.normal(45.0, 12.0, (6, 6, 4))  # two thirds solid, one third fatty hilum
    assert not holds_only_fat(blob, node)
    empty = NodeResult("none", (0.0, 0.0, 0.0), (0, 0, 0), (10, 10, 10), np.zeros((10, 10, 10), bool))
    assert not holds_only_fat(empty, image)


@pytest.mark.parametrize("spacing_k,gap_layers,cut", [
    (0.7, 1, True), (0.7, 2, True), (0.7, 3, False),  # thin slices: the edge band is 2 mm deep (3 layers)
    (1.5, 1, True), (1.5, 2, False),  # 2 layers hold 2 mm
    (5.0, 1, True), (5.0, 2, False),  # thick slices: never less than 2 layers
])
def test_a_mask_stopping_within_2_mm_of_the_ct_edge_is_cut_by_it(spacing_k, gap_layers, cut):
    from LymphNodeMTLLib.inference.node_status_rules import node_status_of

    shape = (40, 60, 60)
    geometry = VolumeGeometry.from_lps((0, 0, 0), (0.8, 0.8, spacing_k), np.eye(3).flatten(), shape)
    top = shape[0] - gap_layers  # the mask ends gap_layers short of the last slice
    mask = np.ones((10, 8, 8), bool)
    result = NodeResult("N", (0.0, 0.0, 0.0), (top - 10, 20, 20), (top, 28, 28), mask)
    expected = node_status.TOUCHES_FIELD_OF_VIEW if cut else node_status.OK
    assert node_status_of(result, True, False, geometry, 0.0) == expected
