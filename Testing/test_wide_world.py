"""The wide training world and training across patch spacings.

The wide world must really show what it promises (contact with similar-attenuation tissue without
a fat margin, touching nodes with separate masks, bulky nodes, thick slices, any orientation) while
keeping the spec's label model; the patch cache must give patches at the spacing drawn, with the
geometry right (the node's size in mm does not change with the spacing).
"""

import ast
import collections
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from LymphNodeMTLLib.evaluation.evaluator import contact_fraction
from LymphNodeMTLLib.network.model_store import load_model
from LymphNodeMTLLib.phantoms.case_generator import generate_phantom_case
from LymphNodeMTLLib.phantoms.features import metastasis_probability
from LymphNodeMTLLib.phantoms.node_placement import RoomMap
from LymphNodeMTLLib.phantoms.node_renderer import random_rotation
from LymphNodeMTLLib.phantoms.tissue_scene import TissueScene
from LymphNodeMTLLib.phantoms.wide_world import WideWorldOptions, generate_wide_case
from LymphNodeMTLLib.preprocessing.network_input import PreprocessingConfig
from LymphNodeMTLLib.preprocessing.patch_sampler import sample_patches, volume_tensor
from LymphNodeMTLLib.training.node_patch_dataset import CaseNodes, NodePatchDataset, build_patch_cache, spacing_levels
from LymphNodeMTLLib.training.trainer import TrainConfig, Trainer

THIN = (0.8, 0.8, 1.0)
PHANTOMS = Path(generate_wide_case.__code__.co_filename).parent
SHARED_MODULES = {"phantom_case", "scene_grid", "tissue_scene", "real_background", "scanner", "node_placement"}


def _case(seed, n_nodes=6, **options):
    spacing = options.pop("spacing", THIN)
    direction = options.pop("direction", np.eye(3))
    return generate_wide_case(np.random.default_rng(seed), n_nodes, options=WideWorldOptions(**options),
                              spacing=spacing, direction=direction)


def _seed_in_own_mask(case, node) -> bool:
    ijk = np.round(case.geometry.ras_to_ijk_points(np.asarray(node.seed_ras))[0]).astype(int)
    return bool(case.label_map[tuple(ijk[::-1])] == node.mask_value)


def _contacts(case):
    return [contact_fraction(case.label_map == n.mask_value, case.image, case.geometry.spacing[::-1])
            for n in case.nodes]


def test_contact_nodes_abut_similar_tissue_and_fat_nodes_do_not():
    contact, in_fat = [], []
    for seed in (1, 2, 3):
        case = _case(seed, n_nodes=8, contact_share=0.5, cluster_share=0.0, bulky_share=0.0)
        for share, info in zip(_contacts(case), case.metadata["node_placement"]):
            (contact if info["mode"] == "contact" else in_fat).append(share)
    assert len(contact) >= 6 and len(in_fat) >= 6
    # no fat margin over part of the surface: a real share of the surroundings reads as soft tissue
    assert np.mean(np.array(contact) > 0.1) >= 0.75 and np.median(contact) > 0.2
    # placed with 2 mm of fat all round (a later node may still come to abut one)
    assert np.median(in_fat) < 0.02 and np.mean(np.array(in_fat) < 0.1) >= 0.75


def test_cluster_nodes_touch_with_separate_masks_and_seeds():
    case = _case(3, n_nodes=6, cluster_share=0.7, contact_share=0.2, bulky_share=0.0)
    modes = [m["mode"] for m in case.metadata["node_placement"]]
    assert "cluster" in modes
    values = [n.mask_value for n in case.nodes]
    assert sorted(values) == list(range(1, len(values) + 1))  # one value per node, none lost
    touching = 0
    from scipy import ndimage

    for n in case.nodes:
        own = case.label_map == n.mask_value
        assert own.any() and _seed_in_own_mask(case, n)
        grown = ndimage.binary_dilation(own)
        touching += bool(((case.label_map > 0) & ~own & grown).any())
    assert touching >= 2  # a touching pair counts twice


def test_thick_slice_and_coarse_grids():
    thick = generate_wide_case(np.random.default_rng(4), 5, options=WideWorldOptions(thick_share=1.0, coarse_share=0.0))
    coarse = generate_wide_case(np.random.default_rng(5), 5, options=WideWorldOptions(thick_share=0.0, coarse_share=1.0))
    assert thick.metadata["protocol"] == "thick" and 3.0 <= max(thick.geometry.spacing) <= 5.0
    assert min(thick.geometry.spacing) <= 1.0
    assert coarse.metadata["protocol"] == "coarse"
    assert 1.5 <= min(coarse.geometry.spacing) and np.ptp(coarse.geometry.spacing) < 1e-9
    for case in (thick, coarse):
        assert case.nodes and all((case.label_map == n.mask_value).any() for n in case.nodes)
        assert all(_seed_in_own_mask(case, n) for n in case.nodes)


def test_oblique_grid_draws_nodes_of_the_right_volume():
    direction = random_rotation(np.random.default_rng(8)) * np.array([1.0, -1.0, 1.0])[None, :]
    case = _case(6, n_nodes=4, direction=direction, lobulated_share=0.0, bulky_share=0.0, cluster_share=0.0)
    assert not case.geometry.is_axis_aligned()
    voxel = float(np.prod(case.geometry.spacing))
    for n in case.nodes:
        assert _seed_in_own_mask(case, n)
        volume = (case.label_map == n.mask_value).sum() * voxel
        expected = 4.0 / 3.0 * np.pi * np.prod(n.appearance.semi_axes_mm)
        assert volume == pytest.approx(expected, rel=0.35)


def test_bulky_nodes_show_large_and_keep_the_spec_label_model():
    case = _case(7, n_nodes=2, spacing=(1.5, 1.5, 1.5), bulky_share=1.0, contact_share=0.0, cluster_share=0.0)
    assert case.nodes
    for n, info in zip(case.nodes, case.metadata["node_placement"]):
        assert info["bulky"] and info["visible_short_axis_mm"] >= 30.0
        assert n.features.short_axis_mm == 30.0  # the spec's clip of s
        assert 2 * n.appearance.semi_axes_mm.max() <= 80.0 + 1e-6


def test_every_node_keeps_the_spec_label_model():
    case = _case(9, n_nodes=8)
    for n in case.nodes:
        assert n.probability == pytest.approx(float(metastasis_probability(**n.features.as_dict())))
        assert n.label in (0, 1)


def test_real_background_nodes_sit_also_against_tissue(tmp_path):
    # a small real-looking CT: fat with a soft-tissue block and air around
    image = np.full((60, 120, 120), -1000.0, dtype=np.float32)
    image[5:55, 10:110, 10:110] = -100.0
    image[5:55, 55:110, 10:110] = 50.0
    from LymphNodeMTLLib.core.geometry import VolumeGeometry

    geometry = VolumeGeometry.from_lps((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), np.eye(3), image.shape)
    case = generate_wide_case(np.random.default_rng(10), 5, background=(image, geometry),
                              options=WideWorldOptions(contact_share=1.0, cluster_share=0.0, bulky_share=0.0))
    assert case.metadata["background"] == "array"
    assert case.nodes and max(_contacts(case)) > 0.1


# --- what the wide world shares with the spec's ---------------------------------------------------
def _sibling_imports(path):
    """(module, name) of every `from .module import name` in a phantoms module."""
    tree = ast.parse(path.read_text())
    return [(node.module, alias.name) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 for alias in node.names]


def test_the_worlds_share_their_scene_and_placement_through_public_modules():
    for path in PHANTOMS.glob("*.py"):
        for module, name in _sibling_imports(path):
            assert not name.startswith("_"), f"{path.name} imports {module}.{name}, a private name"
    for world in ("case_generator", "wide_world"):
        used = {module for module, _ in _sibling_imports(PHANTOMS / f"{world}.py")}
        assert SHARED_MODULES <= used, f"{world}.py does not build on {SHARED_MODULES - used}"
        assert not used & {"case_generator", "wide_world"}, f"{world}.py takes its parts from the other world"


def test_both_worlds_paint_and_place_with_the_shared_scene(monkeypatch):
    calls = collections.Counter()
    for owner, name in ((TissueScene, "paint"), (TissueScene, "add_texture"), (RoomMap, "random_voxel")):
        def counted(*args, _run=getattr(owner, name), _name=name, **kwargs):
            calls[_name] += 1
            return _run(*args, **kwargs)
        monkeypatch.setattr(owner, name, counted)
    worlds = {
        "spec": lambda: generate_phantom_case(np.random.default_rng(0), 2, spacing=(1.5, 1.5, 1.5), direction=np.eye(3),
                                              field_of_view_mm=(90.0, 90.0, 45.0)),
        "wide": lambda: _case(0, n_nodes=2, spacing=(2.0, 2.0, 2.0), cluster_share=0.0),
    }
    for world, generate in worlds.items():
        calls.clear()
        generate()
        assert calls["paint"] and calls["add_texture"] and calls["random_voxel"], (world, dict(calls))


# --- across spacings ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def spec_case():
    return generate_phantom_case(np.random.default_rng(21), 4, spacing=(0.9, 0.9, 1.2), direction=np.eye(3),
                                 field_of_view_mm=(90.0, 90.0, 70.0))


def _nodes(case):
    return CaseNodes("c", case.image, case.geometry, np.array([n.seed_ras for n in case.nodes]),
                     [n.node_id for n in case.nodes], [n.label for n in case.nodes],
                     [n.mask_value for n in case.nodes], case.label_map)


def test_spacing_levels_are_log_spaced_and_checked():
    assert spacing_levels(1.0, 4.0, 3) == (1.0, 2.0, 4.0)
    assert spacing_levels(1.0, 1.0, 1) == (1.0,)
    with pytest.raises(ValueError):
        spacing_levels(2.0, 1.0, 3)


def test_cache_across_spacings_gives_patches_at_the_drawn_spacing(spec_case):
    pre = PreprocessingConfig(patch_size=24, patch_spacing_mm=1.0)
    cache = build_patch_cache([_nodes(spec_case)], pre, jitter_mm=2.0, spacings_mm=[1.0, 2.0])
    n = len(spec_case.nodes)
    assert len(cache) == 2 * n and cache.margin == 2  # jitter room at the finest spacing
    assert sorted(cache.spacing_mm.tolist()) == [1.0] * n + [2.0] * n
    size = 24 + 2 * cache.margin
    volume = volume_tensor(spec_case.image, "cpu")
    voxel_mm3 = float(np.prod(spec_case.geometry.spacing))
    for row in range(len(cache)):
        spacing = float(cache.spacing_mm[row])
        k = [nd.node_id for nd in spec_case.nodes].index(cache.node_ids[row])
        node = spec_case.nodes[k]
        direct = sample_patches(volume, spec_case.geometry, np.array([node.seed_ras]), size, spacing)
        torch.testing.assert_close(cache.images[row : row + 1].float(), direct.half().float())
        # the node's size in mm does not change with the patch spacing
        true_mm3 = (spec_case.label_map == node.mask_value).sum() * voxel_mm3
        # (within a sixth; nearest-neighbour sampling of a node of a few voxels is coarser)
        if true_mm3 >= 200.0:
            assert float(cache.masks[row].sum()) * spacing**3 == pytest.approx(true_mm3, rel=1 / 6)
        # centred on the seed: the mask's centroid lies near the patch centre, in mm
        centroid = torch.nonzero(cache.masks[row, 0]).float().mean(0)
        offset_mm = (centroid - (size - 1) / 2.0).norm() * spacing
        assert float(offset_mm) <= 3.0 + 2.0 * spacing


def test_one_spacing_keeps_todays_cache(spec_case):
    pre = PreprocessingConfig(patch_size=24, patch_spacing_mm=1.5)
    cache = build_patch_cache([_nodes(spec_case)], pre, jitter_mm=3.0)
    assert cache.spacing_mm is None and len(cache) == len(spec_case.nodes) and cache.margin == 2


def test_dataset_draws_each_nodes_spacing_per_step(spec_case):
    pre = PreprocessingConfig(patch_size=24, patch_spacing_mm=1.0)
    cache = build_patch_cache([_nodes(spec_case)], pre, jitter_mm=2.0, spacings_mm=[1.0, 2.0])
    train = NodePatchDataset(cache, pre, augment=True, jitter_mm=2.0, seed=0)
    assert len(train) == len(spec_case.nodes)  # one sample per node
    seen = set()
    for epoch in range(8):
        train.set_epoch(epoch)
        seen |= {float(train[i]["spacing_mm"]) for i in range(len(train))}
        assert train[0]["image"].shape == (1, 24, 24, 24)
    assert seen == {1.0, 2.0}
    # every row scored without augmentation, at its own spacing
    assert len(NodePatchDataset(cache, pre, augment=False)) == len(cache)


def test_trainer_across_spacings_records_the_spacings(tmp_path, spec_case):
    config = TrainConfig(epochs=1, batch_size=4, device="cpu", network={"channels": [4, 8]},
                         preprocessing={"patch_size": 16, "patch_spacing_mm": 1.5}, mixed_precision=False,
                         spacing_range_mm=[1.5, 3.0], spacing_levels=2, descriptor_refit=True, val_fraction=0.0)
    trainer = Trainer(config, tmp_path / "model", log=lambda *_: None)
    assert trainer.cache_spacing_options()["spacings_mm"] == (1.5, 3.0)
    cache = build_patch_cache([_nodes(spec_case)], trainer.pre, config.jitter_mm, **trainer.cache_spacing_options())
    trainer.set_cache(cache)
    seen = []  # the spacings the head measured in, per forward call
    trainer.network.head_input.register_forward_pre_hook(lambda _m, args: seen.append(set(args[3].tolist())))
    trainer.fit()
    assert set().union(*seen) == {1.5, 3.0}  # each patch measured at its own spacing
    seen.clear()
    trainer.finish()
    assert set().union(*seen) == {1.5, 3.0}  # the refit reads the training rows the same way
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["training"]["spacing_range_mm"] == [1.5, 3.0]
    assert saved["zoom_spacings_mm"] == [1.5, 3.0]  # the engine zooms over these
    assert load_model(tmp_path / "model").config.zoom_spacings_mm == (1.5, 3.0)
    # fine-tuning it across other spacings: same network and preprocessing, its own zoom levels
    tuned = Trainer(dataclasses.replace(config, spacing_range_mm=[1.5, 2.25], init_from=str(tmp_path / "model")),
                    tmp_path / "tuned", log=lambda *_: None)
    assert tuned.model_config.zoom_spacings_mm == (1.5, 2.25)
    with pytest.raises(ValueError):  # the network is built at the patch spacing: it must be in range
        Trainer(TrainConfig(preprocessing={"patch_spacing_mm": 1.0}, spacing_range_mm=[1.5, 3.0], device="cpu"),
                tmp_path / "other", log=lambda *_: None)


def test_levels_per_node_keep_the_finest_and_draw_the_rest(spec_case):
    pre = PreprocessingConfig(patch_size=16, patch_spacing_mm=1.0)
    cache = build_patch_cache([_nodes(spec_case)], pre, jitter_mm=2.0, spacings_mm=[1.0, 1.5, 2.0, 3.0],
                              levels_per_node=2, seed=4)
    by_node = {}
    for node_id, spacing in zip(cache.node_ids, cache.spacing_mm.tolist()):
        by_node.setdefault(node_id, []).append(spacing)
    assert len(by_node) == len(spec_case.nodes)
    assert all(len(v) == 2 and 1.0 in v for v in by_node.values())
    assert len({max(v) for v in by_node.values()}) > 1 or len(by_node) < 3  # the coarser level varies


def test_trained_spacings_always_hold_the_networks_own():
    from LymphNodeMTLLib.training.trainer import trained_spacings

    pre = PreprocessingConfig(patch_spacing_mm=1.0)
    assert trained_spacings(TrainConfig(), pre) == (1.0,)
    assert trained_spacings(TrainConfig(spacing_range_mm=[1.0, 3.0], spacing_levels=4), pre) == (1.0, 1.44, 2.08, 3.0)
    # log-spaced levels of [0.8, 3.2] miss 1.0 mm: it is added
    assert 1.0 in trained_spacings(TrainConfig(spacing_range_mm=[0.8, 3.2], spacing_levels=3), pre)
