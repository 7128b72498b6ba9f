"""The fatty-hilum sector descriptors: a wedge of fat cut into a node from one side shows as one dark
sector around the long axis, alike on axial, flipped, oblique and anisotropic CT lattices, and a
node without one shows none."""

import numpy as np
import pytest
import torch
from geometry_cases import lattice_around, voxel_centres_ras
from LymphNodeMTLLib.network.hilum_sectors import ellipsoid_frame, hilum_sector_signs
from LymphNodeMTLLib.network.node_descriptors import DESCRIPTOR_NAMES, _moments, node_descriptors
from LymphNodeMTLLib.preprocessing.network_input import PreprocessingConfig, window_hu
from LymphNodeMTLLib.preprocessing.patch_sampler import sample_patches, volume_tensor
from scipy.spatial.transform import Rotation

CENTRE_RAS = np.array([-20.0, 15.0, -60.0])
PRE = PreprocessingConfig()
SEMI_AXES_MM = np.array([3.5, 4.5, 7.0])  # the long axis last, as the node's local z
NODE_ROTATION = Rotation.from_euler("zyx", [40, 25, -30], degrees=True).as_matrix()  # node frame -> RAS
HILUM = ("hilum_sector_drop", "hilum_sector_drop_z", "hilum_mask_gap")


def _geometry(spacing, direction_lps, half_extent_mm=38.0):
    return lattice_around(CENTRE_RAS, spacing, direction_lps, half_extent_mm)


def _node(geometry, hilum: bool, mask_leaves_hilum_out: bool = False, seed=0):
    """Descriptors of an ellipsoid node (45 HU) in fat (-100 HU), 15 HU noise, with or without a
    hilum: fat (-60 HU) within 30 degrees of one side around the long axis, from relative radius
    0.75 to the surface."""
    rng = np.random.default_rng(seed)
    ras = voxel_centres_ras(geometry)
    local = (ras - CENTRE_RAS) @ NODE_ROTATION
    relative = np.linalg.norm(local / SEMI_AXES_MM, axis=-1)
    inside = relative <= 1.0
    azimuth = np.arctan2(local[..., 1], local[..., 0])
    wedge = inside & (relative >= 0.75) & (np.abs(azimuth - 0.6) < np.deg2rad(30.0)) if hilum else np.zeros_like(inside)
    image = np.where(inside, 45.0, -100.0)
    image[wedge] = -60.0
    image = image + rng.normal(0.0, 15.0, geometry.shape_kji)
    drawn = inside & ~wedge if mask_leaves_hilum_out else inside
    patch = sample_patches(volume_tensor(image.astype(np.float32), "cpu"), geometry, CENTRE_RAS[None],
                           PRE.patch_size, PRE.patch_spacing_mm)
    mask = sample_patches(volume_tensor(drawn.astype(np.float32), "cpu"), geometry, CENTRE_RAS[None],
                          PRE.patch_size, PRE.patch_spacing_mm, mode="nearest", outside_value=0.0)
    desc = node_descriptors(mask, window_hu(patch, PRE), PRE.patch_spacing_mm, PRE.hu_window)[0]
    return {name: float(desc[DESCRIPTOR_NAMES.index(name)]) for name in HILUM}


OBLIQUE = Rotation.from_euler("xyz", [25, -15, 35], degrees=True).as_matrix()
FLIP = np.diag([-1.0, 1.0, -1.0])
LATTICES = {
    "axial": ((0.8, 0.8, 0.8), np.eye(3)),
    "flipped": ((0.8, 0.8, 0.8), FLIP),
    "oblique": ((0.8, 0.8, 0.8), OBLIQUE),
    "anisotropic": ((0.6, 0.9, 1.5), np.eye(3)),
}


@pytest.fixture(scope="module")
def nodes():
    out = {}
    for name, (spacing, direction) in LATTICES.items():
        g = _geometry(spacing, direction)
        out[name, "hilum"] = _node(g, hilum=True)
        out[name, "plain"] = _node(g, hilum=False)
    g = _geometry(*LATTICES["oblique"])
    out["oblique", "hilum_left_out"] = _node(g, hilum=True, mask_leaves_hilum_out=True)
    return out


def test_the_hilum_descriptors_are_appended_after_the_earlier_ones():
    # where models saved with 28 descriptors have them: later descriptors only ever come after
    assert DESCRIPTOR_NAMES[25:28] == HILUM
    assert DESCRIPTOR_NAMES[24] == "noise_anisotropy"


@pytest.mark.parametrize("lattice", list(LATTICES))
def test_a_hilum_shows_as_a_dark_sector_and_a_plain_node_does_not(nodes, lattice):
    hilum, plain = nodes[lattice, "hilum"], nodes[lattice, "plain"]
    assert hilum["hilum_sector_drop"] > 0.3  # > 30 HU darker than the typical sector
    assert plain["hilum_sector_drop"] < 0.12  # only the noise's spread over 12 windows
    # in tens of standard errors: a hilum is over 10 SE, the plain node's darkest sector within 3
    assert hilum["hilum_sector_drop_z"] > 1.0
    assert plain["hilum_sector_drop_z"] < 0.3


def test_the_encodings_agree(nodes):
    drops = [nodes[lattice, "hilum"]["hilum_sector_drop"] for lattice in LATTICES]
    assert max(drops) - min(drops) < 0.12


def test_the_mask_gap_sees_a_hilum_the_mask_left_out(nodes):
    assert nodes["oblique", "hilum_left_out"]["hilum_mask_gap"] > 0.15
    assert nodes["oblique", "hilum"]["hilum_mask_gap"] < 0.08  # the voxelised rim only
    assert nodes["oblique", "plain"]["hilum_mask_gap"] < 0.08


def test_the_ellipsoid_frame_maps_the_moment_ellipsoid_to_the_unit_sphere_with_the_long_axis_last():
    # a solid ellipsoid on a 1 mm grid, long along the patch's first (z) axis
    z, y, x = np.meshgrid(*[np.arange(40) - 19.5] * 3, indexing="ij")
    solid = ((z / 15.0) ** 2 + (y / 6.0) ** 2 + (x / 9.0) ** 2) <= 1.0
    mask = torch.from_numpy(solid.astype(np.float32))[None, None]
    moments = _moments(mask, 1.0)
    frame = ellipsoid_frame(*moments)[0]
    inside = frame[torch.from_numpy(solid.reshape(-1))]
    assert float(inside.norm(dim=-1).max()) == pytest.approx(1.0, abs=0.08)
    coords = moments[2][0][torch.from_numpy(solid.reshape(-1))]  # (x, y, z) mm
    long_axis_reach = float(coords[inside[:, 2].abs().argmax(), 2] - coords[:, 2].mean())
    assert abs(long_axis_reach) == pytest.approx(15.0, abs=1.0)


def test_no_usable_sector_gives_zeros_not_nans():
    frame = torch.zeros(2, 10, 3)  # every voxel at the centre: no shell voxel at all
    out = hilum_sector_signs(frame, torch.full((2, 10), 45.0), torch.ones(2, 10), torch.full((2,), 15.0))
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, :2], torch.zeros(2, 2))
