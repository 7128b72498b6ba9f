"""A stress test world, drawn with a deliberately different appearance model from the training ones.

A model trained on case_generator.py and wide_world.py and tested on cases of the same generators
is tested on its own habits. This generator shares only the spec's label model (features.py: the
latent features, P and the label) and builds everything the image shows another way:

- shape: a superquadric (|x/a|^p + |y/b|^p + |z/c|^p <= 1, p from 1.6 to 3: diamond-ish to
  box-ish) with the spec's axes, made irregular by bumps (small balls on its surface, more with
  margin irregularity m) instead of a perturbed radius;
- interior: solid attenuation uniform 30-80 HU, texture from blurred voxel speckle (not cosine
  waves), an off-centre necrotic core, a fatty hilum as a notch (a ball cut out at the surface);
- surroundings: a torso of rounded boxes (organs, muscle sheets) and sinusoidal vessels in fat
  of -110 to -60 HU, with nodes against the boxes, touching each other, or free in fat;
- scanner: noise whose SD grows toward the body's centre and with attenuation (photon
  statistics: the training worlds' noise is the same everywhere), low-frequency banding
  along the slice axis, a slice profile that averages fine sub-slices (not per-node sub-samples),
  in-plane spacing 0.5-0.9 mm, slices of 1-5 mm from a list of routine protocols, and flipped or
  permuted grids (SimpleITK's own Flip and PermuteAxes keep the physical positions).
Truth per node: the mask on the middle sub-slice of each slice, before blur and noise.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..core.geometry import VolumeGeometry, lps_to_ras_points
from .features import sample_labels, sample_node_features
from .node_renderer import NodeAppearance, SmoothField, random_rotation
from .phantom_case import PhantomCase, PhantomNode

SLICE_PROTOCOLS_MM = (1.0, 1.25, 2.0, 2.5, 3.0, 5.0)
SUB_SLICE_MM = 1.0  # slice profile: fine sub-slices at most this far apart, averaged per slice
FAT, BOX, VESSEL, NODE = 1, 2, 3, 4
CENTRE_NOISE_GAIN = 2.5


def generate_stress_case(rng: np.random.Generator, n_nodes: int, background=None, reorient: bool = True) -> PhantomCase:
    """One stress case with up to `n_nodes` nodes (a node that finds no room is left out).

    `background` is accepted for the dataset writer's interface and must be None: the stress world
    builds its own surroundings. reorient=False keeps the axial grid (no flip, no permutation).
    """
    if background is not None:
        raise ValueError("the stress generator builds its own surroundings; pass no background")
    in_plane = float(rng.uniform(0.5, 0.9))
    thickness = float(rng.choice(SLICE_PROTOCOLS_MM))
    n_sub = int(np.ceil(thickness / SUB_SLICE_MM)) | 1  # odd: the middle sub-slice is the slice centre
    fine = np.array([thickness / n_sub, in_plane, in_plane])  # (k, j, i) mm of the fine grid
    extent = np.array([rng.uniform(100.0, 140.0), rng.uniform(120.0, 160.0), rng.uniform(120.0, 160.0)])
    n_slices = max(3, int(round(extent[0] / thickness)))
    shape = (n_slices * n_sub, int(extent[1] / in_plane), int(extent[2] / in_plane))
    coords = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, fine)]  # LPS mm: z, y, x
    hu, tissue = _torso(rng, shape, coords)
    label_fine = np.zeros(shape, dtype=np.int16)
    features = sorted(sample_node_features(rng, n_nodes), key=lambda f: -f.short_axis_mm * f.axis_ratio)
    placed = []
    for f in features:
        node = _place(rng, hu, tissue, label_fine, coords, n_sub, f, placed, len(placed) + 1)
        if node is not None:
            placed.append(node)
    if not placed:
        raise ValueError("no room for a stress node; use a larger field of view")
    hu = _scanner(rng, hu, fine, n_sub)
    label_map = label_fine[n_sub // 2 :: n_sub]
    origin_lps = np.array([coords[2][0], coords[1][0], coords[0][n_sub // 2]])
    image = sitk.GetImageFromArray(hu.astype(np.float32))
    image.SetSpacing((in_plane, in_plane, thickness))
    shift = rng.uniform(-80.0, 80.0, 3)  # away from the origin: moves every node alike
    image.SetOrigin(tuple(float(v) for v in origin_lps + shift))
    labels_image = sitk.GetImageFromArray(label_map)
    labels_image.CopyInformation(image)
    change = _reorientation(rng)
    if reorient:
        image, labels_image = change(image), change(labels_image)
    geometry = VolumeGeometry.from_sitk(image)
    probabilities = [f.probability for _, _, f, _ in placed]
    labels = sample_labels(rng, probabilities)
    nodes = []
    for (value, centre_lps, f, seed_lps), label in zip(placed, labels):
        centre = lps_to_ras_points(np.asarray(centre_lps) + shift)[0]
        seed = lps_to_ras_points(np.asarray(seed_lps) + shift)[0]
        nodes.append(PhantomNode.drawn(value, centre, seed, f, label, _appearance_record(f)))
    return PhantomCase(sitk.GetArrayFromImage(image).astype(np.float32), geometry,
                       sitk.GetArrayFromImage(labels_image).astype(np.int16), nodes,
                       {"background": "stress", "slice_mm": thickness, "in_plane_mm": in_plane})


def _torso(rng, shape, coords):
    """Fat with rounded boxes (organs, muscle sheets) and sinusoidal vessels, air outside."""
    z, y, x = np.meshgrid(*coords, indexing="ij", sparse=True)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    tissue = np.zeros(shape, dtype=np.uint8)
    half = [c[-1] for c in coords]
    body = (np.abs(x) / (0.95 * half[2])) ** 4 + (np.abs(y) / (0.9 * half[1])) ** 4 <= 1.0  # a rounded box
    body = np.broadcast_to(body, shape)
    hu[body] = rng.uniform(-110.0, -60.0)
    tissue[body] = FAT
    for _ in range(rng.integers(3, 7)):
        centre = [rng.uniform(-0.6, 0.6) * h for h in half]
        size = rng.uniform(8.0, 30.0, 3)
        if rng.random() < 0.3:  # a muscle sheet: thin along one axis, long along another
            size[rng.integers(1, 3)] = rng.uniform(3.0, 6.0)
            size[0] = half[0]
        box = sum(((np.abs(c - m) / s) ** 6) for c, m, s in zip((z, y, x), centre, size)) <= 1.0
        where = np.broadcast_to(box, shape) & (tissue == FAT)
        hu[where] = rng.uniform(30.0, 70.0)
        tissue[where] = BOX
    for _ in range(rng.integers(1, 4)):
        radius = rng.uniform(3.0, 9.0)
        amplitude, wavelength = rng.uniform(5.0, 25.0), rng.uniform(60.0, 200.0)
        y0, x0 = rng.uniform(-0.5, 0.5) * half[1], rng.uniform(-0.5, 0.5) * half[2]
        path_x = x0 + amplitude * np.sin(2 * np.pi * z / wavelength + rng.uniform(0, 2 * np.pi))
        tube = (x - path_x) ** 2 + (y - y0) ** 2 <= radius**2
        where = np.broadcast_to(tube, shape) & (tissue == FAT)
        hu[where] = rng.uniform(100.0, 300.0) if rng.random() < 0.6 else rng.uniform(35.0, 55.0)
        tissue[where] = VESSEL
    return hu, tissue


def _place(rng, hu, tissue, label_fine, coords, n_sub, features, placed, value):
    """Draw one superquadric node into the fine grid; returns (value, centre LPS, features, seed)."""
    semi = np.array([features.short_axis_mm / 2.0, 0.0, features.axis_ratio * features.short_axis_mm / 2.0])
    semi[1] = rng.uniform(semi[0], semi[2])
    power = rng.uniform(1.6, 3.0)
    rotation = random_rotation(rng)
    reach = float(semi.max()) + 2.0
    mode = rng.choice(["box", "cluster", "fat"], p=[0.4, 0.2, 0.4]) if placed else rng.choice(["box", "fat"])
    for _ in range(60):
        if mode == "cluster":
            other = placed[rng.integers(len(placed))][1]
            direction = rng.normal(size=3)
            centre = np.asarray(other) + direction / np.linalg.norm(direction) * rng.uniform(0.7, 1.0) * (reach + 4.0)
        else:
            want = BOX if mode == "box" else FAT
            surface = tissue == want
            if mode == "box":  # a box voxel beside fat: the node then straddles the box's face
                surface = surface & ndimage.binary_dilation(tissue == FAT, iterations=2)
            flat = np.flatnonzero(surface[:: 3, :: 3, :: 3])
            if not len(flat):
                return None
            kji = np.array(np.unravel_index(flat[rng.integers(len(flat))], surface[:: 3, :: 3, :: 3].shape)) * 3
            xyz = np.array([coords[2][kji[2]], coords[1][kji[1]], coords[0][kji[0]]])
            offset = rng.normal(size=3)
            centre = xyz + offset / np.linalg.norm(offset) * (rng.uniform(0.3, 0.8) * semi[0] if mode == "box" else 0.0)
        lo = [np.searchsorted(c, centre[2 - a] - reach) for a, c in enumerate(coords)]
        hi = [np.searchsorted(c, centre[2 - a] + reach) for a, c in enumerate(coords)]
        if any(l <= 1 for l in lo) or any(h >= len(c) - 1 for h, c in zip(hi, coords)):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        z, y, x = np.meshgrid(*(c[s] for c, s in zip(coords, box)), indexing="ij")
        local = (np.stack([x, y, z], axis=-1) - centre) @ rotation
        inside = (np.abs(local / semi) ** power).sum(axis=-1) <= 1.0
        for _ in range(int(2 + 10 * features.margin_irregularity)):  # bumps on the surface
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            bump = d * semi / max(float(np.sum(np.abs(d) ** power)) ** (1.0 / power), 1e-6)
            inside |= np.linalg.norm(local - bump, axis=-1) <= rng.uniform(0.15, 0.35) * semi[0]
        region = tissue[box]
        on_slice = ((np.arange(box[0].start, box[0].stop) % n_sub) == n_sub // 2)[:, None, None]
        if (inside & on_slice).sum() < 3 or np.isin(region[inside], (0, VESSEL)).any():
            continue  # too thin to show on the slices' centres, or over air or a vessel
        rim = ndimage.binary_dilation(inside, iterations=2) & ~inside
        if mode == "box" and (region[rim] == FAT).mean() < 0.3:
            continue  # against a box over part of its surface, not buried in it
        taken = label_fine[box] > 0
        if mode == "cluster":
            inside &= ~taken  # the later node gives way: it must still show on the slices' centres
            if (inside & on_slice).sum() < 3 or not (ndimage.binary_dilation(inside) & taken).any():
                continue
        elif (ndimage.binary_dilation(inside, iterations=2) & taken).any():
            continue
        _paint_node(rng, hu[box], local, inside, semi, features)
        label_fine[box][inside] = value
        tissue[box][inside] = NODE
        points = np.stack([x, y, z], axis=-1)[inside & on_slice]  # the seed's voxel is in the truth mask
        near = np.linalg.norm(points - centre, axis=1) <= 3.0
        seed = points[np.flatnonzero(near)[rng.integers(near.sum())]] if near.any() else points[len(points) // 2]
        return value, tuple(centre), features, tuple(seed)
    return None


def _paint_node(rng, hu_box, local, inside, semi, features):
    solid = rng.uniform(30.0, 80.0)
    speckle = ndimage.gaussian_filter(rng.standard_normal(inside.shape).astype(np.float32), 1.2)
    speckle /= max(float(speckle.std()), 1e-6)
    values = solid + (5.0 + 20.0 * features.heterogeneity) * speckle
    if features.necrosis_fraction > 0:
        core_centre = rng.uniform(-0.3, 0.3, 3) * semi
        core = np.linalg.norm((local - core_centre) / semi, axis=-1) <= features.necrosis_fraction
        values = np.where(core, rng.uniform(5.0, 30.0) + 4.0 * speckle, values)
    if features.fatty_hilum:
        d = np.array([rng.normal(), rng.normal(), 0.0])
        d /= max(np.linalg.norm(d), 1e-6)
        notch = np.linalg.norm(local - d * semi, axis=-1) <= 0.45 * semi[0] + 0.2 * semi[1]
        values = np.where(notch, rng.uniform(-90.0, -40.0), values)
    hu_box[inside] = values[inside]


def _scanner(rng, hu_fine, fine_kji, n_sub):
    """Slice profile (mean of sub-slices), in-plane blur, attenuation-dependent noise, banding."""
    blurred = ndimage.gaussian_filter(hu_fine, (0.0, *(rng.uniform(0.5, 1.0) / fine_kji[1:])))
    slices = blurred.reshape(-1, n_sub, *blurred.shape[1:]).mean(axis=1)
    base = rng.uniform(6.0, 20.0)
    # photon statistics: rays through the middle of the body cross the most tissue, so the noise
    # grows toward the centre (CENTRE_NOISE_GAIN times the edge's), and denser voxels add a little
    k, j, i = (np.linspace(-1.0, 1.0, n) for n in slices.shape)
    radial = 1.0 - np.minimum(j[:, None] ** 2 + i[None, :] ** 2, 1.0)
    sd = base * (1.0 + (CENTRE_NOISE_GAIN - 1.0) * radial)[None] * np.sqrt(np.clip((slices + 1000.0) / 1000.0, 0.0, 3.0))
    noise = ndimage.gaussian_filter(rng.standard_normal(slices.shape).astype(np.float32), (0.0, 0.5, 0.5))
    noise /= max(float(noise.std()), 1e-6)
    banding = rng.uniform(0.0, 8.0) * np.sin(np.arange(slices.shape[0]) * rng.uniform(0.2, 1.0))[:, None, None]
    return slices + sd * noise + banding * (slices > -900)


def _reorientation(rng):
    """A function giving a flipped or permuted grid (or none), the same for the CT and its labels."""
    u = rng.random()
    if u < 0.3:
        flips = [bool(v) for v in rng.integers(0, 2, 3)]
        return lambda image: sitk.Flip(image, flips)
    if u < 0.5:
        order = [int(v) for v in rng.permutation(3)]
        return lambda image: sitk.PermuteAxes(image, order)
    return lambda image: image


def _appearance_record(features) -> NodeAppearance:
    """A NodeAppearance placeholder (the stress shape is no ellipsoid): its axes and features."""
    short = features.short_axis_mm / 2.0
    return NodeAppearance(np.array([short, short, features.axis_ratio * short]), np.eye(3), 0.0,
                          SmoothField(np.zeros((1, 3)), np.zeros(1), np.ones(1)), 0.0, 0.0,
                          SmoothField(np.zeros((1, 3)), np.zeros(1), np.ones(1)), features.necrosis_fraction,
                          0.0, None, 0.0)
