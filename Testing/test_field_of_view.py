"""Zoom to the node: spheres and ellipsoids of 4 to 80 mm, in thin (0.7 mm) and thick-slice (5 mm)
volumes, axial and oblique, get complete masks through the finest field of view that holds them;
the engine never zooms beyond the spacings the model config declares."""

import json
import shutil

import numpy as np
import pytest
from geometry_cases import lattice_around
from LymphNodeMTLLib.core import node_status
from LymphNodeMTLLib.core.case import Case, Seed
from LymphNodeMTLLib.core.measurements import measure_node
from LymphNodeMTLLib.core.node_result import NodeResult
from LymphNodeMTLLib.inference.engine import NodeEngine
from LymphNodeMTLLib.inference.field_of_view import PatchView, choose_view, holds, spacing_that_holds
from LymphNodeMTLLib.network.model_store import default_model_dir, record_checksums
from scipy.spatial.transform import Rotation

SIZES_MM = (4, 20, 50, 80)
CENTRE_RAS = np.array([-31.0, 18.5, -60.0])
SEED_OFFSET_MM = np.array([0.4, -0.3, 0.2])  # a click a little off the centre
NODE_HU, FAT_HU = 45.0, -100.0
LATTICES = {
    "thin_axial": ((0.7, 0.7, 0.7), np.eye(3)),
    "thick_axial": ((0.7, 0.7, 5.0), np.eye(3)),
    "thin_oblique": ((0.7, 0.7, 0.7), Rotation.from_euler("xyz", [20, -12, 30], degrees=True).as_matrix()),
    "thick_oblique": ((0.7, 0.7, 5.0), Rotation.from_euler("xyz", [8, -5, 25], degrees=True).as_matrix()),
}
# semi-axes (R, A, S) per size d: a sphere, and an ellipsoid flattened in A and S
SHAPES = {"sphere": (1.0, 1.0, 1.0), "ellipsoid": (1.0, 0.7, 0.8)}


def _shape_case(lattice: str, shape: str, size_mm: float, seed: int = 0):
    """A fat volume with one node of `shape` and long axis `size_mm`, reaching at least 8 mm
    beyond it (and 26 mm from its centre: a small node's 48 mm view is mostly CT, not air)."""
    spacing, direction = LATTICES[lattice]
    semi = np.asarray(SHAPES[shape]) * size_mm / 2.0
    geometry = lattice_around(CENTRE_RAS, spacing, direction, max(size_mm / 2.0 + 8.0, 26.0))
    # RAS of voxel (k, j, i) = t + M[:, 0] i + M[:, 1] j + M[:, 2] k, summed per axis by broadcasting
    m = geometry.ijk_to_ras
    k, j, i = (np.arange(n, dtype=np.float32).reshape(shape_) for n, shape_ in
               zip(geometry.shape_kji, ((-1, 1, 1), (1, -1, 1), (1, 1, -1))))
    q = np.zeros(geometry.shape_kji, np.float32)
    for axis in range(3):
        q += (((m[axis, 3] - CENTRE_RAS[axis]) + m[axis, 0] * i + m[axis, 1] * j + m[axis, 2] * k)
              / semi[axis]) ** 2
    truth = q <= 1.0
    rng = np.random.default_rng(seed)
    image = np.where(truth, NODE_HU, FAT_HU).astype(np.float32)
    image += rng.normal(0, 12, image.shape).astype(np.float32)
    return Case(image, geometry, [Seed("1", tuple(CENTRE_RAS + SEED_OFFSET_MM))]), truth


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def _truth_result(truth, case):
    idx = np.argwhere(truth)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    r = NodeResult("truth", case.seeds[0].ras, tuple(lo), tuple(hi),
                   truth[tuple(slice(a, b) for a, b in zip(lo, hi))].copy())
    measure_node(r, case.image, case.geometry)
    return r


# spheres on every lattice, ellipsoids on one thin and one thick (keeps the suite fast)
CASES = [(lat, shape, size) for lat in LATTICES for shape in SHAPES for size in SIZES_MM
         if shape == "sphere" or lat in ("thin_oblique", "thick_axial")]


@pytest.fixture(scope="module")
def engine():
    return NodeEngine(device="cpu")


@pytest.fixture(scope="module")
def outcomes(engine):
    """(lattice, shape, size) -> (result, truth mask, truth's measured result, in-plane voxel mm)."""
    out = {}
    for lattice, shape, size in CASES:
        case, truth = _shape_case(lattice, shape, size)
        (result,) = engine.predict(case)
        out[lattice, shape, size] = (result, truth, _truth_result(truth, case),
                                     float(max(LATTICES[lattice][0][:2])))
    return out


@pytest.mark.parametrize("lattice,shape,size", CASES)
def test_every_node_gets_a_complete_mask_in_the_finest_view_that_holds_it(engine, outcomes, lattice, shape, size):
    result, truth, _, _ = outcomes[lattice, shape, size]
    mask = result.full_mask(truth.shape)
    dice = _dice(mask, truth)
    if size >= 20:
        assert dice >= 0.9, f"Dice {dice:.3f}"
    elif lattice.startswith("thin"):
        assert dice >= 0.7, f"Dice {dice:.3f}"
    else:
        assert mask.any()
    assert result.status == node_status.OK
    # the field of view: 48 mm at 1 mm while the node fits it, else the finest wider one that holds it
    views = [engine.config.preprocessing.patch_size * s for s in engine.zoom_spacings_mm]
    assert result.extra["fields_of_view_mm"][0] == 48.0 and result.field_of_view_mm in views
    if size <= 20:
        assert result.field_of_view_mm == 48.0
    else:
        finer = views[views.index(result.field_of_view_mm) - 1]
        assert result.field_of_view_mm > size and finer <= 1.2 * size  # the finer view could not hold it


@pytest.mark.parametrize("lattice,shape,size", [c for c in CASES if c[2] >= 20])
def test_recist_axes_within_one_voxel_of_the_voxelised_shape(outcomes, lattice, shape, size):
    """One voxel: of the CT in plane, or of the patch the mask was taken from where that is
    coarser (a mask found at 2 mm cannot place its edge closer than that). Through a wider view,
    one and a half: the bundled models (v5, v6) set a 50-80 mm node's edge up to 1.2 patch voxels out
    (axes 2-5 % long)."""
    result, _, true, in_plane = outcomes[lattice, shape, size]
    patch_voxel = result.field_of_view_mm / 48.0
    voxel = max(in_plane, patch_voxel if patch_voxel <= 1.0 else 1.5 * patch_voxel)
    assert result.short_axis_mm == pytest.approx(true.short_axis_mm, abs=voxel)
    assert result.long_axis_mm == pytest.approx(true.long_axis_mm, abs=voxel)


def test_a_node_cut_by_the_ct_edge_is_never_a_silent_partial_mask(engine):
    case, truth = _shape_case("thin_axial", "sphere", 20)
    # keep only the slices up to 4 mm above the node's centre: the CT cuts the node
    k_centre = int(round(case.geometry.ras_to_ijk_points(CENTRE_RAS)[0][2]))
    keep = k_centre + int(4.0 / 0.7)
    cut = Case(case.image[:keep].copy(), case.geometry.crop((0, 0, 0), (keep, *case.geometry.shape_kji[1:])),
               case.seeds)
    (result,) = engine.predict(cut)
    assert result.mask.any()
    assert result.status == node_status.TOUCHES_FIELD_OF_VIEW
    assert np.isnan(result.probability) and result.predicted_label == -1


def test_an_old_model_config_never_zooms(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(default_model_dir(), folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("zoom_spacings_mm")
    (folder / "config.json").write_text(json.dumps(config))
    record_checksums(folder)  # a deliberate edit: the config, not its checksum, is under test
    engine = NodeEngine(folder, device="cpu")
    assert engine.zoom_spacings_mm == (1.0,)
    case, _ = _shape_case("thick_axial", "sphere", 50)
    (result,) = engine.predict(case)
    assert result.field_of_view_mm == 48.0 and result.extra["fields_of_view_mm"] == [48.0]
    assert result.status != node_status.OK and np.isnan(result.probability)


def _view(spacing, reach):
    return PatchView(spacing, 48, reach)


def test_the_finest_complete_view_wins_unless_a_wider_one_shows_a_larger_node():
    assert holds(20.0, 48, 1.0) and not holds(22.5, 48, 1.0)
    # a small node: both views hold it, the finer keeps its detail
    assert choose_view([_view(1.0, 10.0), _view(2.0, 11.0)]).spacing_mm == 1.0
    # the fine view saw a fragment; the wide view a node larger than the fine view holds
    assert choose_view([_view(1.0, 3.0), _view(2.0, 32.0)]).spacing_mm == 2.0
    # the wide view runs into its own border (a larger structure): the fine, complete view stays
    assert choose_view([_view(1.0, 10.0), _view(2.0, 95.0)]).spacing_mm == 1.0
    # nothing complete: the widest view with a mask, which the engine marks as cut
    assert choose_view([_view(1.0, 24.0), _view(2.0, 48.0)]).spacing_mm == 2.0
    assert choose_view([_view(1.0, 0.0), _view(2.0, 0.0)]).spacing_mm == 1.0
    assert spacing_that_holds(30.0, 48, (1.0, 2.0)) == (2.0, True)
    assert spacing_that_holds(60.0, 48, (1.0, 2.0)) == (2.0, False)
