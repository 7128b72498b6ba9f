"""Geometry: IJK <-> RAS <-> LPS conversions, patch sampling, paste-back and measurements must not
depend on how a volume is encoded (LPS/RAS, flips, permuted, oblique, anisotropic)."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from geometry_cases import (
    SPHERE_CENTRE_RAS,
    SPHERE_RADIUS_MM,
    other_lattice_encodings,
    same_lattice_encodings,
    sphere_distance,
    sphere_volume,
    voxel_centres_ras,
)
from LymphNodeMTLLib.core.geometry import VolumeGeometry, lps_to_ras_points
from LymphNodeMTLLib.core.measurements import axial_diameters, measure_node
from LymphNodeMTLLib.core.node_result import NodeResult
from LymphNodeMTLLib.inference.mask_pasting import paste_patch_probability
from LymphNodeMTLLib.preprocessing.patch_sampler import patch_offsets_ras, sample_patches, volume_tensor

ALL = {**same_lattice_encodings(), **other_lattice_encodings()}
PATCH, PATCH_MM = 32, 1.0


@pytest.mark.parametrize("name", sorted(ALL))
def test_ijk_ras_matches_simpleitk(name):
    """Our IJK->RAS equals SimpleITK's index->LPS with the LPS->RAS flip (independent code)."""
    geom = ALL[name]
    img = sitk.Image([int(n) for n in geom.shape_kji[::-1]], sitk.sitkUInt8)
    geom.apply_to_sitk(img)
    rng = np.random.default_rng(0)
    ijk = rng.uniform(0, 20, size=(10, 3))
    lps = np.array([img.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in ijk])
    np.testing.assert_allclose(geom.ijk_to_ras_points(ijk), lps_to_ras_points(lps), atol=1e-9)
    np.testing.assert_allclose(geom.ras_to_ijk_points(geom.ijk_to_ras_points(ijk)), ijk, atol=1e-9)
    assert VolumeGeometry.from_sitk(img).same_grid(geom, tol=1e-9)


def test_same_lattice_encodings_share_voxel_centres():
    """Fixture sanity: the re-encodings describe the same physical points."""
    ref = np.sort(voxel_centres_ras(ALL["lps_axial"]).reshape(-1, 3), axis=0)
    for name, geom in same_lattice_encodings().items():
        pts = np.sort(voxel_centres_ras(geom).reshape(-1, 3), axis=0)
        np.testing.assert_allclose(pts, ref, atol=1e-9, err_msg=name)
    assert not same_lattice_encodings()["ras_axial"].same_grid(ALL["lps_axial"])


def _patch_sphere() -> np.ndarray:
    d = np.linalg.norm(patch_offsets_ras(PATCH, PATCH_MM).numpy(), axis=-1)
    return d <= SPHERE_RADIUS_MM


@pytest.mark.parametrize("name", ["lps_axial", "ras_axial", "flipped_k", "permuted_sagittal", "oblique"])
def test_patch_sampling_is_orientation_independent(name):
    """A patch sampled at the sphere centre shows the sphere at the patch centre, RAS-aligned."""
    geom = ALL[name]
    image, _ = sphere_volume(geom)
    patch = sample_patches(volume_tensor(image, "cpu"), geom, SPHERE_CENTRE_RAS[None], PATCH, PATCH_MM)
    sampled = patch[0, 0].numpy() > (45 - 100) / 2
    truth = _patch_sphere()
    d = np.linalg.norm(patch_offsets_ras(PATCH, PATCH_MM).numpy(), axis=-1)
    boundary = np.abs(d - SPHERE_RADIUS_MM) < 1.5  # interpolation band, 1 voxel of the coarsest CT
    assert np.array_equal(sampled[~boundary], truth[~boundary])


def test_patch_outside_volume_reads_air():
    geom = ALL["lps_axial"]
    image, _ = sphere_volume(geom)
    corner = geom.ijk_to_ras_points([[0, 0, 0]])
    patch = sample_patches(volume_tensor(image, "cpu"), geom, corner, 16, 1.0)[0, 0]
    assert float(patch.min()) == -1000.0  # beyond the edge: air, not edge-voxel repetition
    assert float(patch.max()) == pytest.approx(-100.0, abs=1e-3)


@pytest.mark.parametrize("name", sorted(ALL))
def test_paste_back_gives_the_sphere_in_every_encoding(name):
    """The analytic sphere on the patch grid, pasted into the CT grid, is the sphere there (+-1
    voxel at the boundary)."""
    geom = ALL[name]
    patch_prob = torch.from_numpy(_patch_sphere().astype(np.float32))
    box = paste_patch_probability(patch_prob, geom, SPHERE_CENTRE_RAS, PATCH_MM)
    pasted = np.zeros(geom.shape_kji, bool)
    pasted[tuple(slice(a, b) for a, b in zip(box.start_kji, box.stop_kji))] = box.probability > 0.5
    dist = sphere_distance(geom)
    truth = dist <= SPHERE_RADIUS_MM
    band = np.abs(dist - SPHERE_RADIUS_MM) <= max(geom.spacing)
    assert np.array_equal(pasted[~band], truth[~band])
    assert pasted.sum() > 0


@pytest.mark.parametrize("name", sorted(ALL))
def test_measurements_agree_across_encodings(name):
    geom = ALL[name]
    image, mask = sphere_volume(geom)
    idx = np.argwhere(mask)
    start, stop = idx.min(0), idx.max(0) + 1
    result = NodeResult("1", tuple(SPHERE_CENTRE_RAS), tuple(start), tuple(stop),
                        mask[tuple(slice(a, b) for a, b in zip(start, stop))])
    measure_node(result, image, geom)
    true_volume = 4 / 3 * np.pi * SPHERE_RADIUS_MM**3
    # thick slices: the sphere is sampled on 5 mm planes, so allow a coarser volume
    assert result.volume_mm3 == pytest.approx(true_volume, rel=0.12 if name == "thick_slices" else 0.05)
    assert result.long_axis_mm == pytest.approx(2 * SPHERE_RADIUS_MM, abs=0.5)
    assert result.short_axis_mm == pytest.approx(2 * SPHERE_RADIUS_MM, abs=0.5)
    assert result.mean_hu == pytest.approx(45.0)
    assert result.sd_hu == pytest.approx(0.0)


def test_same_lattice_measurements_are_identical():
    values = []
    for geom in same_lattice_encodings().values():
        _, mask = sphere_volume(geom)
        d = axial_diameters(mask, geom, (0, 0, 0))
        values.append((d.long_axis_mm, d.short_axis_mm, d.long_slice_s_mm))
    np.testing.assert_allclose(values, [values[0]] * len(values), atol=1e-6)


def test_axial_diameters_of_an_ellipse():
    """An axial ellipse 20 x 10 mm, rotated 30 degrees in plane: long 20, short 10 (+-0.5 mm)."""
    geom = VolumeGeometry.from_lps((0, 0, 0), (0.5, 0.5, 2.0), np.eye(3).flatten(), (5, 80, 80))
    centres = voxel_centres_ras(geom)
    c = centres[2, 40, 40]
    rel = centres - c
    ang = np.deg2rad(30)
    u = rel[..., 0] * np.cos(ang) + rel[..., 1] * np.sin(ang)
    v = -rel[..., 0] * np.sin(ang) + rel[..., 1] * np.cos(ang)
    mask = ((u / 10) ** 2 + (v / 5) ** 2 <= 1) & (np.abs(rel[..., 2]) < 0.1)
    d = axial_diameters(mask, geom, (0, 0, 0))
    assert d.long_axis_mm == pytest.approx(20.0, abs=0.5)
    assert d.short_axis_mm == pytest.approx(10.0, abs=0.5)
