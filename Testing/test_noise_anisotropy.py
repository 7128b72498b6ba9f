"""The noise-anisotropy descriptor: how thick the slices were that a patch was resampled from, read
from the patch's own noise, alike for axial, flipped, oblique and permuted encodings."""

import numpy as np
import pytest
import torch
from geometry_cases import lattice_around, voxel_centres_ras
from LymphNodeMTLLib.network.node_descriptors import DESCRIPTOR_NAMES, node_descriptors
from LymphNodeMTLLib.preprocessing.network_input import PreprocessingConfig, window_hu
from LymphNodeMTLLib.preprocessing.patch_sampler import sample_patches, volume_tensor
from scipy.spatial.transform import Rotation

CENTRE_RAS = np.array([10.0, -30.0, 80.0])
PRE = PreprocessingConfig()
COLUMN = DESCRIPTOR_NAMES.index("noise_anisotropy")


def _geometry(spacing, direction_lps, half_extent_mm=46.0):
    return lattice_around(CENTRE_RAS, spacing, direction_lps, half_extent_mm)


def _anisotropy(geometry, seed=0):
    """The descriptor of a node in fat, scanned with white noise (20 HU) on `geometry`'s lattice."""
    rng = np.random.default_rng(seed)
    ras = voxel_centres_ras(geometry)
    inside = np.linalg.norm(ras - CENTRE_RAS, axis=-1) < 7.0
    image = np.where(inside, 45.0, -100.0) + rng.normal(0.0, 20.0, geometry.shape_kji)
    patch = sample_patches(volume_tensor(image.astype(np.float32), "cpu"), geometry, CENTRE_RAS[None],
                           PRE.patch_size, PRE.patch_spacing_mm)
    mask = sample_patches(volume_tensor(inside.astype(np.float32), "cpu"), geometry, CENTRE_RAS[None],
                          PRE.patch_size, PRE.patch_spacing_mm, mode="nearest", outside_value=0.0)
    return float(node_descriptors(mask, window_hu(patch, PRE), PRE.patch_spacing_mm, PRE.hu_window)[0, COLUMN])


OBLIQUE = Rotation.from_euler("xyz", [25, -15, 35], degrees=True).as_matrix()
FLIP_K = np.diag([1.0, 1.0, -1.0])
SAGITTAL = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # the slice axis along L


@pytest.fixture(scope="module")
def values():
    thick = (0.7, 0.7, 4.0)
    return {
        "thin": _anisotropy(_geometry((0.7, 0.7, 0.8), np.eye(3))),
        "thick_axial": _anisotropy(_geometry(thick, np.eye(3))),
        "thick_flipped": _anisotropy(_geometry(thick, FLIP_K)),
        "thick_sagittal": _anisotropy(_geometry(thick, SAGITTAL)),
        "thick_oblique": _anisotropy(_geometry(thick, OBLIQUE)),
        "thin_oblique": _anisotropy(_geometry((0.7, 0.7, 0.8), OBLIQUE)),
        "medium_axial": _anisotropy(_geometry((0.7, 0.7, 2.0), np.eye(3))),
    }


def test_it_comes_right_after_the_24_earlier_descriptors():
    assert COLUMN == 24


def test_thick_slices_read_more_anisotropic_than_thin_ones(values):
    assert values["thin"] < values["medium_axial"] < values["thick_axial"]
    assert values["thick_axial"] - values["thin"] > 0.5


@pytest.mark.parametrize("encoding", ["thick_flipped", "thick_sagittal"])
def test_flips_and_permutations_do_not_change_it(values, encoding):
    assert values[encoding] == pytest.approx(values["thick_axial"], abs=0.15)


def test_a_rotated_lattice_never_reads_thicker_than_it_is(values):
    """An oblique lattice of thin slices reads as thin. An oblique lattice of thick slices reads
    between thin and its axial value, and in practice near thin: the patch sampler does not
    low-pass before resampling, so the tilted noise spectrum aliases back towards isotropy. The
    descriptor then errs towards trusting the other descriptors, never towards inventing blur."""
    assert values["thin_oblique"] == pytest.approx(values["thin"], abs=0.1)
    assert values["thin"] - 0.1 < values["thick_oblique"] < values["thick_axial"]


def test_a_patch_all_outside_the_window_reads_zero():
    air = torch.full((1, 1, 48, 48, 48), -1000.0)
    mask = torch.zeros_like(air)
    mask[..., 20:28, 20:28, 20:28] = 1.0
    assert float(node_descriptors(mask, window_hu(air, PRE), 1.0, PRE.hu_window)[0, COLUMN]) == 0.0
