"""The bundled model follows prompts: a line, a box and clicks give the same mask whatever the CT's
encoding, a line sets the field of view, negative clicks cut a leak, the same prompts always give
the same mask, and a model that reads seeds only refuses prompts."""

from __future__ import annotations

import numpy as np
import pytest
from geometry_cases import (
    SPHERE_CENTRE_RAS,
    SPHERE_RADIUS_MM,
    other_lattice_encodings,
    same_lattice_encodings,
    sphere_volume,
    voxel_centres_ras,
)
from LymphNodeMTLLib.core.case import Case, Seed
from LymphNodeMTLLib.core.errors import InputError
from LymphNodeMTLLib.core.geometry import VolumeGeometry
from LymphNodeMTLLib.core.node_prompts import Click, NodePrompts
from LymphNodeMTLLib.inference.engine import NodeEngine
from scipy import ndimage

CENTRE = tuple(float(v) for v in SPHERE_CENTRE_RAS)


@pytest.fixture(scope="module")
def engine():
    return NodeEngine(device="cpu")


def _noisy(image, seed=0):
    return image + np.random.default_rng(seed).normal(0, 12, image.shape).astype(np.float32)


def _sphere_case(geometry):
    image, truth = sphere_volume(geometry)
    return Case(_noisy(image), geometry, [Seed("1", CENTRE)]), truth


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def _ras_set(mask, geometry):
    return {tuple(p) for p in np.round(voxel_centres_ras(geometry)[mask], 3)}


LINE = ((CENTRE[0] - SPHERE_RADIUS_MM, CENTRE[1], CENTRE[2]), (CENTRE[0] + SPHERE_RADIUS_MM, CENTRE[1], CENTRE[2]))
PROMPTS = {
    "line": NodePrompts("1", line=LINE),
    "seed and clicks": NodePrompts("1", seed=CENTRE, clicks=(
        Click((CENTRE[0], CENTRE[1] + 5.0, CENTRE[2]), True), Click((CENTRE[0] + 14.0, CENTRE[1], CENTRE[2]), False))),
    "box": NodePrompts("1", box=(tuple(np.subtract(CENTRE, 9.0)), tuple(np.add(CENTRE, 9.0)))),
}


@pytest.mark.parametrize("kind", sorted(PROMPTS))
def test_prompts_give_the_same_mask_in_every_encoding_of_one_lattice(engine, kind):
    encodings = same_lattice_encodings()
    reference_case, truth = _sphere_case(encodings["lps_axial"])
    reference = engine.refine(reference_case, PROMPTS[kind]).full_mask(truth.shape)
    assert _dice(reference, truth) > 0.85, kind
    band = ndimage.binary_dilation(reference) & ~ndimage.binary_erosion(reference)
    band_set = _ras_set(band, encodings["lps_axial"])
    for name, geometry in encodings.items():
        case, _ = _sphere_case(geometry)
        mask = engine.refine(case, PROMPTS[kind]).full_mask(geometry.shape_kji)
        differing = _ras_set(mask, geometry) ^ _ras_set(reference, encodings["lps_axial"])
        assert differing <= band_set, f"{kind}, {name}: {len(differing - band_set)} voxels differ off the boundary"


@pytest.mark.parametrize("name", ["oblique", "thick_slices"])
@pytest.mark.parametrize("kind", ["line", "seed and clicks"])
def test_prompts_find_the_same_node_on_oblique_and_thick_slice_lattices(engine, name, kind):
    geometry = other_lattice_encodings()[name]
    case, truth = _sphere_case(geometry)
    mask = engine.refine(case, PROMPTS[kind]).full_mask(geometry.shape_kji)
    dist = np.linalg.norm(voxel_centres_ras(geometry) - SPHERE_CENTRE_RAS, axis=-1)
    off_boundary = np.abs(dist - SPHERE_RADIUS_MM) > max(geometry.spacing)
    assert np.array_equal(mask[off_boundary], truth[off_boundary]), f"{kind} on {name}"


def test_the_same_prompts_give_the_same_mask_and_refine_equals_predict(engine):
    case, _ = _sphere_case(same_lattice_encodings()["lps_axial"])
    prompts = PROMPTS["seed and clicks"]
    a = engine.refine(case, prompts)
    b = engine.refine(case, prompts)
    (c,) = engine.predict(case, prompts={"1": prompts})
    assert np.array_equal(a.mask, b.mask) and np.array_equal(a.mask, c.mask)
    assert a.probability == b.probability == c.probability and a.bbox_start_kji == c.bbox_start_kji


def test_a_click_after_others_runs_one_step_and_gives_what_the_whole_chain_gives(engine):
    case, _ = _sphere_case(same_lattice_encodings()["lps_axial"])
    prompts = PROMPTS["seed and clicks"]
    fresh = NodeEngine(device="cpu")
    whole = fresh.refine(case, prompts)
    clicking = NodeEngine(device="cpu")
    clicking.refine(case, prompts.first_clicks(1))
    encoder_passes, head_passes = [], []
    network = clicking.network
    encode, classify_under = network.encode, network.classify_under
    network.encode = lambda x: encoder_passes.append(x.shape[0]) or encode(x)
    network.classify_under = lambda *a, **k: head_passes.append(1) or classify_under(*a, **k)
    last = clicking.refine(case, prompts)
    # the new click's step is the one encoder pass; its mask is re-classified by the head alone
    # (the view's head features are remembered from the click before)
    assert encoder_passes == [1] and head_passes == [1]
    assert np.array_equal(last.mask, whole.mask) and last.probability == whole.probability


def _big_node():
    """A 60 mm node of soft tissue in fat, on a 1.5 mm grid."""
    geometry = VolumeGeometry.from_lps((0, 0, 0), (1.5, 1.5, 1.5), np.eye(3).flatten(), (70, 70, 70))
    centres = voxel_centres_ras(geometry)
    centre = geometry.ijk_to_ras_points([[35, 35, 35]])[0]
    truth = np.linalg.norm(centres - centre, axis=-1) <= 30.0
    image = np.where(truth, 45.0, -100.0).astype(np.float32)
    return Case(_noisy(image, 3), geometry, [Seed("big", tuple(centre))]), truth, centre


def test_a_line_sets_the_field_of_view_of_a_60_mm_node(engine):
    case, truth, centre = _big_node()
    line = (tuple(centre - [29.0, 0.0, 0.0]), tuple(centre + [29.0, 0.0, 0.0]))
    result = engine.refine(case, NodePrompts("big", line=line))
    patch = engine.config.preprocessing.patch_size
    assert result.extra["fields_of_view_mm"] == [result.field_of_view_mm]  # one view: taken, not searched
    assert result.field_of_view_mm >= 60.0 * 1.2 and result.field_of_view_mm / patch in engine.zoom_spacings_mm
    assert _dice(result.full_mask(truth.shape), truth) > 0.9
    assert result.short_axis_mm == pytest.approx(60.0, abs=4.0) and result.status == "ok"


def _node_against_an_organ():
    """A 14 mm node pressed against a same-density slab (an organ) in fat, 1 mm grid."""
    geometry = VolumeGeometry.from_lps((0, 0, 0), (1.0, 1.0, 1.0), np.eye(3).flatten(), (64, 80, 80))
    centres = voxel_centres_ras(geometry)
    node_centre = geometry.ijk_to_ras_points([[40, 40, 32]])[0]
    node = np.linalg.norm(centres - node_centre, axis=-1) <= 7.0
    organ = (centres[..., 0] - node_centre[0] <= -7.0) & (centres[..., 0] - node_centre[0] >= -40.0) \
        & (np.abs(centres[..., 1] - node_centre[1]) <= 25.0) & (np.abs(centres[..., 2] - node_centre[2]) <= 20.0)
    image = np.where(node | organ, 50.0, -100.0).astype(np.float32)
    return Case(_noisy(image, 5), geometry, [Seed("N", tuple(node_centre))]), node, organ


def test_negative_clicks_cut_a_leak_into_a_touching_same_density_organ(engine):
    """A box drawn past the node into the organ beside it makes the mask leak; negative clicks, each
    at the deepest voxel of the leak that is left, cut it away. The bundled model v6 takes three:
    the first cuts about a tenth, the third leaves about a sixth."""
    case, node, organ = _node_against_an_organ()
    geometry = case.geometry
    box = _box_into_the_organ(case)
    clicks, leaks = (), []
    for _ in range(4):
        mask = engine.refine(case, NodePrompts("N", box=box, clicks=clicks)).full_mask(geometry.shape_kji)
        leaked = mask & organ
        leaks.append(int(leaked.sum()))
        if not leaked.any():
            break
        deepest = np.unravel_index(np.argmax(ndimage.distance_transform_edt(leaked)), leaked.shape)
        clicks += (Click(tuple(geometry.ijk_to_ras_points(np.array(deepest[::-1], float))[0]), False),)
    assert leaks[0] > 0.5 * node.sum(), "a box reaching into the organ should take some of it"
    assert all(b < a for a, b in zip(leaks, leaks[1:])), f"every negative click cuts: {leaks}"
    assert leaks[-1] < 0.25 * leaks[0] and _dice(mask, node) > 0.85  # after at most three clicks


def _box_into_the_organ(case):
    """A box drawn too far to the right: past the node into the organ beside it."""
    seed = np.asarray(case.seeds[0].ras)
    return tuple(float(v) for v in seed - [25.0, 9.0, 9.0]), tuple(float(v) for v in seed + [9.0, 9.0, 9.0])


def test_a_model_that_reads_seeds_only_refuses_prompts(tmp_path):
    from LymphNodeMTLLib.network.model_store import ModelConfig, save_model
    from LymphNodeMTLLib.network.network_config import NetworkConfig
    from LymphNodeMTLLib.network.node_network import MultiTaskNodeNet
    from LymphNodeMTLLib.preprocessing.network_input import PreprocessingConfig

    config = ModelConfig("seeds-only", network={"channels": [4, 8]}, preprocessing=PreprocessingConfig(patch_size=16))
    save_model(tmp_path / "m", config, MultiTaskNodeNet(NetworkConfig(channels=(4, 8))), "a test model")
    case, _ = _sphere_case(same_lattice_encodings()["lps_axial"])
    with pytest.raises(InputError, match="reads seeds only"):
        NodeEngine(tmp_path / "m", device="cpu").refine(case, PROMPTS["line"])


def test_a_click_beyond_the_widest_view_is_refused(engine):
    case, _, centre = _big_node()
    far = Click(tuple(centre + [0.0, 0.0, 49.0]), True)  # in the CT, 49 mm above the seed: well inside
    engine.refine(case, NodePrompts("big", seed=tuple(centre), clicks=(far,)))
    reach = (engine.config.preprocessing.patch_size / 2 - 4) * engine.zoom_spacings_mm[-1]
    geometry = VolumeGeometry.from_lps((0, 0, 0), (1.5, 1.5, 1.5), np.eye(3).flatten(), (160, 70, 70))
    image = np.full(geometry.shape_kji, -100.0, np.float32)
    image[:70] = case.image
    tall = Case(image, geometry, [Seed("big", tuple(centre))])
    beyond = Click(tuple(centre + [0.0, 0.0, reach + 10.0]), True)
    with pytest.raises(InputError, match="beyond the widest view"):
        engine.refine(tall, NodePrompts("big", seed=tuple(centre), clicks=(beyond,)))


def test_what_the_engine_remembers_is_forgotten_on_another_ct_or_another_placement():
    from LymphNodeMTLLib.inference.prompt_chain import StepMemo

    image = np.zeros((4, 4, 4), np.float32)
    here = VolumeGeometry.from_lps((0, 0, 0), (1.0, 1.0, 1.0), np.eye(3).flatten(), image.shape)
    same = VolumeGeometry.from_lps((0, 0, 0), (1.0, 1.0, 1.0), np.eye(3).flatten(), image.shape)
    moved = VolumeGeometry.from_lps((5, 0, 0), (1.0, 1.0, 1.0), np.eye(3).flatten(), image.shape)
    memo = StepMemo(capacity=2)
    memo.on(image, here).put("step", "key")
    assert memo.on(image, same).get("key") == "step"  # a Case rebuilt on the same CT (a server job)
    assert memo.on(image, moved).get("key") is None  # the same voxels placed elsewhere
    memo.on(image, here).put("step", "key")
    assert memo.on(image.copy(), here).get("key") is None  # another array
    memo.on(image, here).put(1, "a")
    memo.put(2, "b")
    memo.put(3, "c")
    assert memo.get("a") is None and memo.get("c") == 3  # the least recently used goes first
    memo.clear()
    assert memo.on(image, here).get("c") is None
