"""Phantom generator (docs/phantom-spec.md v1): feature and label statistics, node shape and
HU, placement, seeds, geometry through every direction matrix, the dataset files, determinism."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from LymphNodeMTLLib.core.geometry import VolumeGeometry
from LymphNodeMTLLib.core.node_attributes import ATTRIBUTE_NAMES
from LymphNodeMTLLib.io.training_manifest import read_nodes_csv
from LymphNodeMTLLib.phantoms.case_generator import generate_phantom_case
from LymphNodeMTLLib.phantoms.dataset_writer import (
    PHANTOM_ATTRIBUTES,
    write_phantom_case,
    write_phantom_dataset,
)
from LymphNodeMTLLib.phantoms.features import (
    NodeFeatures,
    metastasis_probability,
    sample_feature_arrays,
    sample_labels,
    sample_node_features,
)
from LymphNodeMTLLib.phantoms.node_renderer import render_node, sample_node_appearance
from LymphNodeMTLLib.phantoms.scene_grid import random_direction
from scipy import ndimage
from scipy.stats import rankdata

CT_DIR = Path(__file__).resolve().parents[2] / "shared/data/ct"
SMALL_FOV_MM = (72.0, 72.0, 48.0)  # small cases keep the suite fast


def _auc(scores, labels) -> float:
    """Mann-Whitney AUC from ranks (ties get their average rank)."""
    ranks = rankdata(scores)
    positives = np.asarray(labels, dtype=bool)
    n1, n0 = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _grid(spacing, shape_ijk, direction=np.eye(3), centre_ras=(10.0, -20.0, 30.0)):
    spacing, shape_ijk = np.asarray(spacing, float), np.asarray(shape_ijk)
    centre_lps = np.asarray(centre_ras) * [-1, -1, 1]
    origin = centre_lps - np.asarray(direction) @ (spacing * (shape_ijk - 1) / 2)
    return VolumeGeometry.from_lps(origin, spacing, direction, tuple(shape_ijk[::-1]))


def _features(**changes) -> NodeFeatures:
    plain = dict(
        short_axis_mm=10.0,
        axis_ratio=2.0,
        necrosis_fraction=0.0,
        margin_irregularity=0.0,
        heterogeneity=0.0,
        fatty_hilum=False,
    )
    return NodeFeatures(**{**plain, **changes})


# --- features and labels ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def population():
    rng = np.random.default_rng(2024)
    features = sample_feature_arrays(rng, 20000)
    probability = metastasis_probability(**features)
    return features, probability, sample_labels(rng, probability)


def test_feature_distributions_follow_the_spec(population):
    f, _, _ = population
    assert np.median(f["short_axis_mm"]) == pytest.approx(8.0, abs=0.25)
    assert f["short_axis_mm"].min() >= 3.0 and f["short_axis_mm"].max() <= 30.0
    assert f["axis_ratio"].min() >= 1.0 and f["axis_ratio"].max() <= 3.0
    assert np.mean(f["axis_ratio"]) == pytest.approx(1.6, abs=0.03)  # 1 + 2 * 0.3, barely clipped
    assert np.mean(f["necrosis_fraction"] == 0) == pytest.approx(0.75, abs=0.015)
    necrotic = f["necrosis_fraction"][f["necrosis_fraction"] > 0]
    assert necrotic.min() >= 0.1 and necrotic.max() <= 0.5
    assert np.mean(f["margin_irregularity"]) == pytest.approx(2 / 7, abs=0.01)  # Beta(2, 5)
    assert np.mean(f["heterogeneity"]) == pytest.approx(2 / 7, abs=0.01)
    assert np.mean(f["fatty_hilum"]) == pytest.approx(0.5, abs=0.015)


def test_label_model_reproduces_the_published_figures(population):
    f, probability, labels = population
    positive = labels == 1
    assert positive.mean() == pytest.approx(0.35, abs=0.03)
    assert _auc(probability, labels) == pytest.approx(0.88, abs=0.02)
    rule = f["short_axis_mm"] >= 10.0
    assert rule[positive].mean() == pytest.approx(0.57, abs=0.04)  # sensitivity
    assert (~rule[~positive]).mean() == pytest.approx(0.83, abs=0.03)  # specificity
    assert _auc(f["short_axis_mm"], labels) == pytest.approx(0.78, abs=0.02)


def test_node_features_object_agrees_with_the_vectorised_model():
    rng = np.random.default_rng(5)
    nodes = sample_node_features(rng, 50)
    arrays = {name: np.array([getattr(n, name) for n in nodes]) for name in nodes[0].as_dict()}
    assert np.allclose([n.probability for n in nodes], metastasis_probability(**arrays))
    reference = _features(axis_ratio=1.8, margin_irregularity=0.3, heterogeneity=0.3)
    assert reference.logit == pytest.approx(-0.3)  # every term of the logit is zero


# --- one node --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spacing, direction",
    [((0.5, 0.5, 0.5), np.eye(3)), ((0.7, 0.6, 2.0), random_direction(np.random.default_rng(11)))],
    ids=["iso", "oblique-thick"],
)
def test_rendered_node_has_the_ellipsoid_volume_and_centre(spacing, direction):
    geometry = _grid(spacing, np.ceil(40.0 / np.asarray(spacing)).astype(int), direction)
    rng = np.random.default_rng(3)
    appearance = sample_node_appearance(rng, _features(short_axis_mm=10.0, axis_ratio=2.0))
    centre = np.array([10.3, -19.6, 30.2])
    image = np.zeros(geometry.shape_kji, dtype=np.float32)
    render = render_node(image, geometry, centre, appearance)

    expected = 4.0 / 3.0 * np.pi * np.prod(appearance.semi_axes_mm)
    assert render.mask.sum() * geometry.voxel_volume_mm3 == pytest.approx(expected, rel=0.15)
    # Partial volume keeps the node's HU mass even where the centre sampling is coarse.
    hu_mass = image.sum() * geometry.voxel_volume_mm3
    assert hu_mass == pytest.approx(appearance.solid_hu * expected, rel=0.05)
    voxels_ijk = np.argwhere(render.mask)[:, ::-1] + np.asarray(render.start_kji[::-1])
    centroid = geometry.ijk_to_ras_points(voxels_ijk).mean(axis=0)
    assert np.linalg.norm(centroid - centre) < 0.5


def test_plain_node_hu_is_its_solid_attenuation_around_45():
    geometry = _grid((0.6, 0.6, 0.6), (50, 50, 50))
    rng = np.random.default_rng(8)
    solid = []
    for _ in range(60):
        appearance = sample_node_appearance(rng, _features(short_axis_mm=8.0, axis_ratio=1.3))
        image = np.zeros(geometry.shape_kji, dtype=np.float32)
        render = render_node(image, geometry, (10.0, -20.0, 30.0), appearance)
        assert np.allclose(image[render.slices()][render.mask], appearance.solid_hu, atol=1e-3)
        solid.append(appearance.solid_hu)
    assert np.mean(solid) == pytest.approx(45.0, abs=3.0)
    assert 6.0 < np.std(solid) < 11.0


def test_necrotic_core_and_fatty_hilum_are_drawn():
    geometry = _grid((0.5, 0.5, 0.5), (60, 60, 60))
    features = _features(
        short_axis_mm=14.0, axis_ratio=1.2, necrosis_fraction=0.4, fatty_hilum=True
    )
    appearance = sample_node_appearance(np.random.default_rng(4), features)
    image = np.zeros(geometry.shape_kji, dtype=np.float32)
    render = render_node(image, geometry, (10.0, -20.0, 30.0), appearance)
    values = image[render.slices()][render.mask]
    assert np.isclose(values, appearance.necrosis_hu, atol=1e-3).mean() == pytest.approx(
        0.4**3, rel=0.3
    )
    # a quarter-radius-deep wedge opening 60 degrees: (60/360) * (1 - 0.75^3) of the volume
    assert np.isclose(values, appearance.hilum_hu, atol=1e-3).mean() == pytest.approx(0.097, rel=0.3)


# --- whole cases -----------------------------------------------------------------------------
def _assert_case_truth(case):
    spacing_kji = case.geometry.spacing[::-1]
    values = sorted(n.mask_value for n in case.nodes)
    assert values == list(range(1, len(case.nodes) + 1))
    assert sorted(np.unique(case.label_map)) == [0] + values
    assert len({n.node_id for n in case.nodes}) == len(case.nodes)
    margin = np.ceil(3.0 / spacing_kji).astype(int)
    for node in case.nodes:
        mask = case.label_map == node.mask_value
        # Gap to every other node >= 2 mm, measured in a box around this node.
        low = np.maximum(np.argwhere(mask).min(axis=0) - margin, 0)
        high = np.argwhere(mask).max(axis=0) + margin + 1
        box = tuple(slice(a, b) for a, b in zip(low, high))
        distance = ndimage.distance_transform_edt(~mask[box], sampling=spacing_kji)
        others = (case.label_map[box] > 0) & ~mask[box]
        assert not others.any() or distance[others].min() >= 2.0
        # The seed's voxel is in the mask and the seed is within 3 mm of the centre.
        seed_ijk = np.round(case.geometry.ras_to_ijk_points(node.seed_ras)[0]).astype(int)
        seed_kji = tuple(seed_ijk[::-1])
        assert case.label_map[seed_kji] == node.mask_value
        assert np.linalg.norm(np.subtract(node.seed_ras, node.centre_ras)) <= 3.0 + 1e-9
        assert node.probability == pytest.approx(node.features.probability)
        assert node.label in (0, 1)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_cases_keep_their_truth(seed):
    case = generate_phantom_case(np.random.default_rng(seed), 8, field_of_view_mm=(96, 96, 64))
    assert case.image.dtype == np.float32 and case.label_map.dtype == np.int16
    assert case.image.shape == case.geometry.shape_kji == case.label_map.shape
    _assert_case_truth(case)
    assert case.image.min() < -900 and case.image.max() > 0  # air outside, tissue inside
    case.to_case().validate_seeds()


@pytest.mark.parametrize(
    "direction",
    [
        np.diag([-1.0, 1.0, -1.0]),
        np.eye(3)[:, [1, 2, 0]],
        random_direction(np.random.default_rng(17)),
    ],
    ids=["flipped", "permuted", "oblique"],
)
def test_any_direction_gives_nodes_where_the_truth_says(direction):
    case = generate_phantom_case(
        np.random.default_rng(9), 6, spacing=(0.8, 0.8, 3.0), direction=direction,
        field_of_view_mm=(80, 80, 60),
    )
    assert np.allclose(case.geometry.lps_terms()[2], np.asarray(direction).flatten())
    _assert_case_truth(case)
    for node in case.nodes:
        ijk = np.argwhere(case.label_map == node.mask_value)[:, ::-1]
        centroid = case.geometry.ijk_to_ras_points(ijk).mean(axis=0)
        # The centroid moves off the centre only by margin noise and slice sampling.
        assert np.linalg.norm(centroid - node.centre_ras) < 0.3 * node.features.short_axis_mm + 1.5


def test_scanner_noise_and_fat_around_nodes():
    case = generate_phantom_case(
        np.random.default_rng(21),
        6,
        spacing=(0.8, 0.8, 1.0),
        chest=True,
        field_of_view_mm=(96, 96, 48),
    )
    assert 10.0 <= case.metadata["noise_sigma_hu"] <= 25.0
    nodes = case.label_map > 0
    near, nearer = (ndimage.binary_dilation(nodes, iterations=n) for n in (4, 2))
    ring = near & ~nearer
    assert np.median(case.image[ring]) == pytest.approx(-100.0, abs=15.0)


def test_same_seed_same_case():
    a, b = (
        generate_phantom_case(np.random.default_rng(77), 7, field_of_view_mm=SMALL_FOV_MM)
        for _ in range(2)
    )
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label_map, b.label_map)
    assert a.geometry.same_grid(b.geometry, tol=0.0)
    assert [n.seed_ras for n in a.nodes] == [n.seed_ras for n in b.nodes]


def _synthetic_background():
    case = generate_phantom_case(
        np.random.default_rng(31), 1, direction=np.eye(3), field_of_view_mm=(96, 96, 40)
    )
    return case.image, case.geometry


@pytest.mark.parametrize("source", ["synthetic", "chest_noncontrast_lung1.nrrd"])
def test_nodes_inserted_into_a_real_background_leave_it_untouched_elsewhere(source):
    if source == "synthetic":
        background, fov = _synthetic_background(), None
    else:
        path = CT_DIR / source
        if not path.exists():
            pytest.skip(f"{path} not present")
        background, fov = path, (160.0, 160.0, 60.0)
    given = background[0].copy() if source == "synthetic" else None
    case = generate_phantom_case(
        np.random.default_rng(1), 5, background=background, field_of_view_mm=fov
    )
    _assert_case_truth(case)
    if source == "synthetic":
        assert np.array_equal(background[0], given)  # the caller's CT is read, never drawn into
        far = ~ndimage.binary_dilation(case.label_map > 0, iterations=6)
        assert np.array_equal(case.image[far], background[0][far])
        assert case.geometry.same_grid(background[1])


def test_background_resampled_to_a_requested_grid():
    image, geometry = _synthetic_background()
    case = generate_phantom_case(
        np.random.default_rng(2), 3, background=(image, geometry), spacing=(1.0, 1.0, 2.0),
        field_of_view_mm=(80, 80, 30),
    )
    assert np.allclose(case.geometry.spacing, (1.0, 1.0, 2.0))
    assert case.geometry.shape_kji == (15, 80, 80)
    _assert_case_truth(case)


# --- files -----------------------------------------------------------------------------------
def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_written_case_round_trips(tmp_path):
    case = generate_phantom_case(
        np.random.default_rng(4), 6, direction=random_direction(np.random.default_rng(17)),
        field_of_view_mm=SMALL_FOV_MM,
    )
    write_phantom_case(tmp_path / "c", case)
    image = sitk.ReadImage(str(tmp_path / "c/image.nrrd"))
    labels = sitk.ReadImage(str(tmp_path / "c/label_map.nrrd"))
    for written in (image, labels):
        assert VolumeGeometry.from_sitk(written).same_grid(case.geometry, tol=1e-6)
    assert image.GetPixelID() == sitk.sitkInt16
    assert np.abs(sitk.GetArrayFromImage(image) - np.clip(case.image, -1024, 3071)).max() <= 0.5
    assert np.array_equal(sitk.GetArrayFromImage(labels), case.label_map)

    rows = _read_csv(tmp_path / "c/nodes.csv")
    assert list(rows[0]) == ["id", "r", "a", "s", "label", "mask_value", "soft_label", *PHANTOM_ATTRIBUTES]
    truth = {n.node_id: n for n in case.nodes}
    # the visible latent features come back through the manifest reader as node attributes, every digit
    for node in read_nodes_csv(tmp_path / "c/nodes.csv"):
        features = truth[node.node_id].features.as_dict()
        for name, value in zip(ATTRIBUTE_NAMES, node.attributes):
            assert value == float(features[name]) if name in PHANTOM_ATTRIBUTES else math.isnan(value)
    for row in rows:
        node = truth[row["id"]]
        seed = np.array([float(row[k]) for k in "ras"])
        assert np.array_equal(seed, node.seed_ras)
        assert (int(row["label"]), int(row["mask_value"])) == (node.label, node.mask_value)
        assert float(row["soft_label"]) == node.probability  # P, every digit
    truth_rows = _read_csv(tmp_path / "c/truth.csv")
    assert float(truth_rows[0]["probability"]) == truth[truth_rows[0]["id"]].probability
    assert {"short_axis_mm", "fatty_hilum", "centre_r", "seed_s"} <= set(truth_rows[0])


def test_dataset_manifest_and_determinism(tmp_path):
    options = dict(nodes_per_case=(3, 5), field_of_view_mm=SMALL_FOV_MM)
    manifests = [write_phantom_dataset(tmp_path / d, 2, seed=123, **options) for d in "ab"]
    rows = _read_csv(manifests[0])
    assert [r["case_id"] for r in rows] == ["phantom_0000", "phantom_0001"]
    for row in rows:
        labels = sitk.ReadImage(str(manifests[0].parent / row["label_map"]))
        geometry = VolumeGeometry.from_sitk(labels)
        label_map = sitk.GetArrayFromImage(labels)
        nodes = _read_csv(manifests[0].parent / row["nodes"])
        assert 3 <= len(nodes) <= 5
        assert sorted(np.unique(label_map))[1:] == sorted(int(n["mask_value"]) for n in nodes)
        for n in nodes:
            ijk = geometry.ras_to_ijk_points([float(n[k]) for k in "ras"])[0]
            assert label_map[tuple(np.round(ijk).astype(int)[::-1])] == int(n["mask_value"])
        image = sitk.ReadImage(str(manifests[0].parent / row["image"]))
        assert VolumeGeometry.from_sitk(image).same_grid(geometry, tol=0.0)
    for name in ("manifest.csv", "phantom_0001/nodes.csv", "phantom_0001/truth.csv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    for name in ("phantom_0000/image.nrrd", "phantom_0001/label_map.nrrd"):
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / d / name))) for d in "ab")
        assert np.array_equal(a, b)
