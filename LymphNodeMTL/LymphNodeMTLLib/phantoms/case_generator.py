"""Whole phantom CT cases: a body (or a real CT), nodes placed in its fat, scanner blur and noise.

Follows docs/phantom-spec.md (v1). All randomness comes from the caller's
np.random.Generator, so a seed fixes a case exactly. Anatomy is built in patient space (RAS mm) and
sampled through the grid's exact ijk->RAS matrix, so oblique, flipped or permuted grids show the
same anatomy, and every truth position is exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..core.errors import InputError
from ..core.geometry import VolumeGeometry, ras_to_lps_points
from ..io.volume_reader import read_volume
from .features import NodeFeatures, sample_feature_arrays, sample_labels
from .node_renderer import (
    NodeRender,
    node_mask,
    random_rotation,
    render_node,
    sample_node_appearance,
)
from .phantom_case import PhantomCase, PhantomNode

DEFAULT_FIELD_OF_VIEW_MM = (128.0, 128.0, 100.0)  # along i, j, k
BLUR_SIGMA_MM = 0.6
NOISE_SIGMA_HU = (10.0, 25.0)
NODE_GAP_MM = 2.0  # free fat kept around every node: to other nodes, vessels and organs
SEED_JITTER_MM = 3.0
FAT_HU = (-150.0, -50.0)  # fat in a real CT, after smoothing
PLACEMENT_ATTEMPTS = 60  # positions and orientations tried before a node's features are redrawn
FEATURE_REDRAWS = 20

# Tissue classes of the synthetic body and their base HU and texture amplitude.
AIR, FAT, SOFT, VESSEL, LUNG = range(5)
TISSUE_HU = np.array([-1000.0, -100.0, 40.0, 40.0, -850.0], dtype=np.float32)
TISSUE_TEXTURE_HU = np.array([0.0, 20.0, 5.0, 0.0, 20.0], dtype=np.float32)


def generate_phantom_case(
    rng: np.random.Generator,
    n_nodes: int,
    background=None,
    spacing=None,
    direction=None,
    chest: bool | None = None,
    field_of_view_mm=None,
) -> PhantomCase:
    """Generate one phantom case.

    Args:
        rng: the only source of randomness.
        n_nodes: nodes to insert.
        background: None for a synthetic body, else a real CT as a path SimpleITK reads or an
            (image [k, j, i], VolumeGeometry) pair; nodes then go into its fat.
        spacing: (i, j, k) mm; default random (in-plane 0.6-1.0, slices 0.7-5.0), or the
            background's own. A background is resampled when spacing or direction is given.
        direction: 3x3 direction in LPS (SimpleITK's convention, columns = axes); default random
            (mostly axial identity, sometimes flipped, permuted or oblique), or the background's.
        chest: whether the synthetic body has lungs; default random. Ignored with a background.
        field_of_view_mm: (i, j, k) extent of the grid in mm. Synthetic default
            DEFAULT_FIELD_OF_VIEW_MM; a background is cropped (or resampled) to it around its
            centre, and kept whole by default.

    Raises:
        InputError: when the nodes do not fit into the fat (a background with too little fat).
    """
    original = None  # the real CT, kept to add only the nodes' change to it
    if background is None:
        if field_of_view_mm is None:
            field_of_view_mm = DEFAULT_FIELD_OF_VIEW_MM
        geometry = _synthetic_geometry(rng, spacing, direction, field_of_view_mm)
        chest = bool(rng.random() < 0.5) if chest is None else bool(chest)
        contrast = bool(rng.random() < 0.5)
        scene, tissue = _synthetic_scene(rng, geometry, chest, contrast)
        free_fat = tissue == FAT
        metadata = {"background": "synthetic", "chest": chest, "contrast": contrast}
    else:
        scene, geometry, source = _prepare_background(
            background, field_of_view_mm, spacing, direction
        )
        free_fat = _real_fat(scene, geometry)
        metadata = {"background": source}
        original = scene.copy()

    label_map, nodes, renders, redraws = _place_nodes(rng, scene, geometry, free_fat, n_nodes)
    noise_sigma = float(rng.uniform(*NOISE_SIGMA_HU))
    if original is None:
        image = _blur(scene, geometry) + noise_sigma * _standard_noise(rng, scene.shape)
    else:
        image = _insert_into_real(rng, original, scene, geometry, renders, noise_sigma)
    metadata.update(
        noise_sigma_hu=noise_sigma,
        spacing=tuple(float(s) for s in geometry.spacing),
        feature_redraws=redraws,
    )
    return PhantomCase(image.astype(np.float32), geometry, label_map, nodes, metadata)


# --- grid ------------------------------------------------------------------------------------
def _synthetic_geometry(rng, spacing, direction, field_of_view_mm) -> VolumeGeometry:
    if spacing is None:
        in_plane = rng.uniform(0.6, 1.0)
        spacing = (in_plane, in_plane, rng.uniform(0.7, 5.0))
    if direction is None:
        direction = random_direction(rng)
    centre_ras = rng.uniform(-50.0, 50.0, 3)  # away from the origin, to catch origin mistakes
    shape_ijk = np.maximum(1, np.round(np.asarray(field_of_view_mm) / spacing)).astype(int)
    return _grid_around(centre_ras, spacing, direction, shape_ijk)


def random_direction(rng: np.random.Generator) -> np.ndarray:
    """A 3x3 LPS direction: axial identity (60%), flipped (15%), permuted (10%), oblique (15%)."""
    u = rng.random()
    if u < 0.60:
        return np.eye(3)
    if u < 0.75:
        signs = rng.choice([-1.0, 1.0], 3)
        if np.all(signs > 0):
            signs[rng.integers(3)] = -1.0
        return np.diag(signs)
    if u < 0.85:
        # Sagittal or coronal slices: the slice axis runs along R-L or A-P.
        permutation = [(1, 2, 0), (0, 2, 1), (2, 0, 1)][rng.integers(3)]
        return np.eye(3)[:, permutation] * rng.choice([-1.0, 1.0], 3)[None, :]
    return random_rotation(rng)


def _grid_around(centre_ras, spacing, direction_lps, shape_ijk) -> VolumeGeometry:
    """A grid of `shape_ijk` voxels whose centre voxel position is `centre_ras`."""
    direction = np.asarray(direction_lps, dtype=float).reshape(3, 3)
    half = np.asarray(spacing, dtype=float) * (np.asarray(shape_ijk) - 1) / 2.0
    origin_lps = ras_to_lps_points(centre_ras)[0] - direction @ half
    shape_kji = tuple(np.asarray(shape_ijk)[::-1])
    return VolumeGeometry.from_lps(origin_lps, spacing, direction, shape_kji)


def _centre_ras(geometry: VolumeGeometry) -> np.ndarray:
    return geometry.ijk_to_ras_points((np.asarray(geometry.shape_kji[::-1]) - 1) / 2.0)[0]


def _ras_components(geometry: VolumeGeometry, start_kji, stop_kji, origin_ras):
    """R, A, S (float32, (K, J, I)) of the voxel centres in a box, relative to `origin_ras`."""
    k, j, i = (np.arange(a, b, dtype=np.float32) for a, b in zip(start_kji, stop_kji))
    k, j, i = k[:, None, None], j[None, :, None], i[None, None, :]
    m = geometry.ijk_to_ras.astype(np.float32)
    offset = (geometry.ijk_to_ras[:3, 3] - origin_ras).astype(np.float32)
    return tuple(m[row, 0] * i + m[row, 1] * j + m[row, 2] * k + offset[row] for row in range(3))


def _box_of_ras_aabb(geometry: VolumeGeometry, low_ras, high_ras):
    """Voxel box (start_kji, stop_kji) covering an axis-aligned RAS box, clipped to the grid."""
    corners = np.array(np.meshgrid(*zip(low_ras, high_ras), indexing="ij")).reshape(3, -1).T
    ijk = geometry.ras_to_ijk_points(corners)
    start = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)[::-1]
    stop = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, geometry.shape_kji[::-1])[::-1]
    return tuple(start.tolist()), tuple(np.maximum(stop, start).tolist())


# --- synthetic body --------------------------------------------------------------------------
def _synthetic_scene(rng, geometry: VolumeGeometry, chest: bool, contrast: bool):
    """HU (float32) and tissue classes (uint8) of a body: wall, fat, organs, vessels, lungs.

    The body is an elliptic cylinder along S, centred in the grid, sized from the field of view;
    its wall, organs and vessels scale with it, so a small field of view still leaves fat.
    """
    shape = geometry.shape_kji
    centre = _centre_ras(geometry)
    hu = np.full(shape, TISSUE_HU[AIR], dtype=np.float32)
    tissue = np.zeros(shape, dtype=np.uint8)
    r, a, _ = _ras_components(geometry, (0, 0, 0), shape, centre)
    half = 0.5 * float(np.median(geometry.spacing * np.asarray(shape[::-1])))
    scale = half / (0.5 * DEFAULT_FIELD_OF_VIEW_MM[0])
    body_axes = (half * rng.uniform(0.85, 0.98), half * rng.uniform(0.70, 0.85))
    wall = scale * rng.uniform(4.0, 10.0)
    inner_axes = np.subtract(body_axes, wall)
    _paint(hu, tissue, _in_ellipse(r, a, (0.0, 0.0), body_axes), SOFT)
    _paint(hu, tissue, _in_ellipse(r, a, (0.0, 0.0), inner_axes), FAT)
    if chest:
        for side in (-1.0, 1.0):
            centre_ra = (side * 0.58 * inner_axes[0], rng.uniform(-0.1, 0.05) * inner_axes[1])
            lung_axes = inner_axes * np.array([rng.uniform(0.28, 0.34), rng.uniform(0.65, 0.8)])
            lung = _in_ellipse(r, a, centre_ra, lung_axes) & (tissue == FAT)
            _paint(hu, tissue, lung, LUNG)
    for _ in range(rng.integers(1, 4)):
        _add_organ(rng, hu, tissue, geometry, centre, inner_axes, scale)
    for _ in range(rng.integers(2, 6)):
        vessel_hu = rng.uniform(150.0, 250.0) if contrast else TISSUE_HU[VESSEL]
        _add_vessel(rng, hu, tissue, geometry, centre, inner_axes, scale, vessel_hu)
    texture = _smooth_noise(rng, shape, geometry.spacing[::-1], correlation_mm=6.0)
    hu += TISSUE_TEXTURE_HU[tissue] * texture
    return hu, tissue


def _in_ellipse(r, a, centre_ra, axes):
    # Python floats keep the float32 coordinates in float32 (numpy scalars would promote).
    (r0, a0), (ar, aa) = (float(c) for c in centre_ra), (float(x) for x in axes)
    return ((r - r0) / ar) ** 2 + ((a - a0) / aa) ** 2 <= 1.0


def _paint(hu, tissue, where, tissue_class, value=None):
    tissue[where] = tissue_class
    hu[where] = TISSUE_HU[tissue_class] if value is None else value


def _add_organ(rng, hu, tissue, geometry, centre, inner_axes, scale):
    """A soft-tissue ellipsoid (organ, muscle, heart) somewhere inside the body."""
    semi = scale * rng.uniform(8.0, 18.0, 3)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    position = centre + np.array(
        [
            0.7 * inner_axes[0] * np.sqrt(rng.random()) * np.cos(angle),
            0.7 * inner_axes[1] * np.sqrt(rng.random()) * np.sin(angle),
            scale * rng.uniform(-40.0, 40.0),
        ]
    )
    start, stop = _box_of_ras_aabb(geometry, position - semi, position + semi)
    r, a, s = _ras_components(geometry, start, stop, position)
    sr, sa, ss = (float(x) for x in semi)
    inside = (r / sr) ** 2 + (a / sa) ** 2 + (s / ss) ** 2 <= 1.0
    box = tuple(slice(b, e) for b, e in zip(start, stop))
    _paint(hu[box], tissue[box], inside & (tissue[box] != AIR), SOFT)


def _add_vessel(rng, hu, tissue, geometry, centre, inner_axes, scale, vessel_hu):
    """A straight tube through the volume: mostly cranio-caudal, one in three in any direction."""
    radius = scale * rng.uniform(2.5, 7.0)
    if rng.random() < 1.0 / 3.0:
        axis = rng.normal(size=3)
    else:
        tilt, turn = rng.uniform(0.0, np.deg2rad(25.0)), rng.uniform(0.0, 2.0 * np.pi)
        axis = np.array([np.sin(tilt) * np.cos(turn), np.sin(tilt) * np.sin(turn), np.cos(tilt)])
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    point = centre + np.array(
        [0.8 * inner_axes[0] * np.cos(angle), 0.8 * inner_axes[1] * np.sin(angle), 0.0]
    ) * np.sqrt(rng.random())
    box, in_tube = straight_tube(geometry, point, axis, radius)
    inside = in_tube & (tissue[box] != AIR)
    _paint(hu[box], tissue[box], inside, VESSEL, vessel_hu)


def straight_tube(geometry: VolumeGeometry, point, axis, radius: float):
    """A straight tube of `radius` mm through `point` (RAS) along unit `axis`, crossing the whole
    volume: (the voxel box it touches, the tube's voxels in that box)."""
    reach = float(np.linalg.norm(geometry.spacing * np.asarray(geometry.shape_kji[::-1])))
    ends = np.array([point - reach * axis, point + reach * axis])
    start, stop = _box_of_ras_aabb(geometry, ends.min(axis=0) - radius, ends.max(axis=0) + radius)
    r, a, s = _ras_components(geometry, start, stop, point)
    ur, ua, us = (float(x) for x in axis)
    along = r * ur + a * ua + s * us
    box = tuple(slice(b, e) for b, e in zip(start, stop))
    return box, r**2 + a**2 + s**2 - along**2 <= radius**2


def _smooth_noise(rng, shape_kji, spacing_kji, correlation_mm: float) -> np.ndarray:
    """Unit-SD smooth noise: Gaussian values on a coarse lattice, linearly interpolated.

    Interpolation is separable (one small matrix per axis), which is far cheaper than filtering
    a full-resolution white-noise volume.
    """
    coarse_shape = [
        int(np.ceil(n * s / correlation_mm)) + 2 for n, s in zip(shape_kji, spacing_kji)
    ]
    field = rng.standard_normal(coarse_shape).astype(np.float32)
    for axis, (n, m) in enumerate(zip(shape_kji, coarse_shape)):
        weights = _linear_interpolation_matrix(n, m, rng.uniform(0.0, 1.0))
        field = np.moveaxis(np.tensordot(weights, field, axes=([1], [axis])), 0, axis)
    return field / max(float(field.std()), 1e-6)


def _linear_interpolation_matrix(n_out: int, n_in: int, shift: float) -> np.ndarray:
    """(n_out, n_in) weights resampling n_in lattice values onto n_out points spread over them."""
    position = shift + np.arange(n_out) * (n_in - 2) / max(n_out, 1)
    low = np.floor(position).astype(int)
    frac = (position - low).astype(np.float32)
    weights = np.zeros((n_out, n_in), dtype=np.float32)
    weights[np.arange(n_out), low] = 1.0 - frac
    weights[np.arange(n_out), low + 1] = frac
    return weights


# --- real background -------------------------------------------------------------------------
def _prepare_background(background, field_of_view_mm, spacing, direction):
    """The real CT as float32 HU and geometry: cropped to the field of view, resampled if asked."""
    if isinstance(background, (str, Path)):
        array, geometry, _ = read_volume(background)  # files and DICOM series folders alike
        source = str(background)
    else:
        array, geometry = background
        array, source = np.asarray(array, dtype=np.float32), "array"
    if spacing is None and direction is None:
        if field_of_view_mm is not None:
            array, geometry = _crop_centre(array, geometry, field_of_view_mm)
    else:
        array, geometry = _resample(array, geometry, field_of_view_mm, spacing, direction)
    return array, geometry, source


def _crop_centre(array, geometry: VolumeGeometry, field_of_view_mm):
    wanted = np.ceil(np.asarray(field_of_view_mm) / geometry.spacing).astype(int)[::-1]
    size = np.minimum(wanted, geometry.shape_kji)
    start = (np.asarray(geometry.shape_kji) - size) // 2
    stop = start + size
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    return np.ascontiguousarray(array[box]), geometry.crop(tuple(start), tuple(stop))


def _resample(array, geometry: VolumeGeometry, field_of_view_mm, spacing, direction):
    """Linear resampling onto a grid of the field of view centred on the background's centre."""
    _, own_spacing, own_direction = geometry.lps_terms()
    spacing = np.asarray(own_spacing if spacing is None else spacing, dtype=float)
    direction = own_direction if direction is None else direction
    if field_of_view_mm is None:
        field_of_view_mm = geometry.spacing * np.asarray(geometry.shape_kji[::-1])
    shape_ijk = np.maximum(1, np.round(np.asarray(field_of_view_mm) / spacing)).astype(int)
    target = _grid_around(_centre_ras(geometry), spacing, direction, shape_ijk)
    moving = sitk.GetImageFromArray(array)
    geometry.apply_to_sitk(moving)
    reference = sitk.Image([int(n) for n in shape_ijk], sitk.sitkFloat32)
    target.apply_to_sitk(reference)
    resampled = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkLinear, -1000.0)
    return sitk.GetArrayFromImage(resampled).astype(np.float32), target


def _real_fat(array, geometry: VolumeGeometry) -> np.ndarray:
    """Fat voxels of a real CT: HU in [-150, -50] after a light smoothing that calms the noise."""
    smooth = ndimage.gaussian_filter(array, 0.7 / geometry.spacing[::-1], truncate=3.0)
    return (smooth >= FAT_HU[0]) & (smooth <= FAT_HU[1])


def _insert_into_real(rng, original, scene, geometry, renders, noise_sigma):
    """Blur only what the nodes changed, and give the nodes noise: the real CT keeps its own.

    Blurring is linear, so blur(original + change) = original blurred + blur(change); skipping the
    first term leaves the real CT as acquired while the nodes' edges are blurred as a scanner would.
    """
    coverage = np.zeros(scene.shape, dtype=np.float32)
    for render in renders:
        coverage[render.slices()] += render.coverage
    change = _blur(scene - original, geometry)
    node_noise = _blur(coverage, geometry) * _standard_noise(rng, scene.shape)
    return original + change + noise_sigma * node_noise


# --- nodes -----------------------------------------------------------------------------------
def _place_nodes(rng, scene, geometry, free_fat, n_nodes):
    """Place and draw `n_nodes` nodes into `scene` (in place), largest first.

    `free_fat` (modified) marks fat not yet taken by a node; a node and the 2 mm around it must
    lie in it. When a node fits nowhere after many positions and orientations its features are
    redrawn (counted in the returned `redraws`); this only happens to very large nodes.
    """
    features = _features_largest_first(rng, n_nodes)
    mask_values = rng.permutation(n_nodes) + 1  # so ids say nothing about size
    label_map = np.zeros(geometry.shape_kji, dtype=np.int16)
    _clear_border(free_fat)  # nodes keep a voxel off the grid's faces, so none is cut off
    room = _RoomMap(free_fat, geometry)
    nodes, renders, redraws = [], [], 0
    for value, node_features in zip(mask_values, features):
        placed = _try_place(rng, geometry, free_fat, room, node_features)
        if placed is None:  # the map ignores the nodes placed since it was made: refresh, retry
            room = _RoomMap(free_fat, geometry)
            placed = _try_place(rng, geometry, free_fat, room, node_features)
        while placed is None:
            redraws += 1
            if redraws > FEATURE_REDRAWS * n_nodes:
                raise InputError(
                    f"no room for {n_nodes} phantom nodes with 2 mm of fat around each; use fewer "
                    "nodes, a larger field of view or a background with more fat"
                )
            node_features = _features_largest_first(rng, 1)[0]
            placed = _try_place(rng, geometry, free_fat, room, node_features)
        centre, appearance = placed
        render = render_node(scene, geometry, centre, appearance, spill_allowed=free_fat)
        label_map[render.slices()][render.mask] = value
        free_fat[render.slices()][render.mask] = False
        seed = _sample_seed(rng, geometry, centre, render)
        nodes.append((int(value), centre, seed, node_features, appearance))
        renders.append(render)

    probabilities = [f.probability for _, _, _, f, _ in nodes]
    labels = sample_labels(rng, probabilities)
    truth = [
        PhantomNode.drawn(value, centre, seed, f, label, appearance)
        for (value, centre, seed, f, appearance), label in zip(nodes, labels)
    ]
    truth.sort(key=lambda node: node.mask_value)
    return label_map, truth, renders, redraws


def _clear_border(volume: np.ndarray) -> None:
    for axis in range(volume.ndim):
        index = [slice(None)] * volume.ndim
        index[axis] = [0, -1]
        volume[tuple(index)] = False


def _features_largest_first(rng, count) -> list[NodeFeatures]:
    arrays = sample_feature_arrays(rng, count)
    order = np.argsort(-arrays["short_axis_mm"] * arrays["axis_ratio"], kind="stable")
    return [NodeFeatures(**{k: v[i].item() for k, v in arrays.items()}) for i in order]


class _RoomMap:
    """Coarse map of how far each ~2 mm block of free fat is from anything else, in mm.

    Computed once per case; it only proposes centres where a node's inscribed ball could fit.
    The exact check (`_fits`) decides, so the map may go stale as nodes are placed.
    """

    def __init__(self, free_fat: np.ndarray, geometry: VolumeGeometry):
        spacing_kji = geometry.spacing[::-1]
        self.factors = np.maximum(1, np.round(2.0 / spacing_kji)).astype(int)
        shape = np.asarray(free_fat.shape) // self.factors
        cropped = free_fat[tuple(slice(0, n * f) for n, f in zip(shape, self.factors))]
        blocks = cropped.reshape(
            shape[0], self.factors[0], shape[1], self.factors[1], shape[2], self.factors[2]
        ).all(axis=(1, 3, 5))
        self.distance_mm = ndimage.distance_transform_edt(
            blocks, sampling=spacing_kji * self.factors
        )
        self.slack_mm = float(np.linalg.norm(spacing_kji * self.factors))

    def blocks_with_room(self, radius_mm: float) -> np.ndarray:
        """Flat indices of blocks whose centre has at least `radius_mm` of free fat around it."""
        return np.flatnonzero(self.distance_mm >= radius_mm - self.slack_mm)

    def random_voxel(self, rng, blocks: np.ndarray) -> np.ndarray:
        flat = blocks[rng.integers(len(blocks))]
        block = np.array(np.unravel_index(flat, self.distance_mm.shape))
        return block * self.factors + rng.integers(0, self.factors)


def _try_place(rng, geometry, free_fat, room: _RoomMap, features: NodeFeatures):
    """(centre_ras, appearance) of a fitting position and orientation, or None."""
    blocks = None
    for _ in range(PLACEMENT_ATTEMPTS):
        appearance = sample_node_appearance(rng, features)
        if blocks is None:  # the inscribed radius does not depend on the orientation
            blocks = room.blocks_with_room(appearance.min_radius_mm + NODE_GAP_MM)
            if len(blocks) == 0:
                return None
        voxel_kji = room.random_voxel(rng, blocks)
        if not free_fat[tuple(voxel_kji)]:
            continue
        centre = _jittered_centre(rng, geometry, voxel_kji, appearance)
        if _fits(geometry, free_fat, centre, appearance):
            return centre, appearance
    return None


def _jittered_centre(rng, geometry, voxel_kji, appearance) -> np.ndarray:
    """A centre near a voxel centre, close enough that this voxel is surely inside the node.

    Per axis the offset is at most a quarter of the short semi-axis (so the voxel lies within
    0.43 of the inscribed radius) and 1.5 mm (so the voxel is within 3 mm of the centre).
    """
    spacing = geometry.spacing
    limit_mm = np.minimum(0.5 * spacing, min(0.25 * appearance.semi_axes_mm.min(), 1.5))
    offset_ijk = rng.uniform(-1.0, 1.0, 3) * limit_mm / spacing
    return geometry.ijk_to_ras_points(np.asarray(voxel_kji[::-1], dtype=float) + offset_ijk)[0]


def _fits(geometry, free_fat, centre_ras, appearance) -> bool:
    """Whether the node and every voxel within 2 mm of it lie in free fat (inside the grid)."""
    if not _core_in_free_fat(geometry, free_fat, centre_ras, appearance):
        return False  # cheap early rejection; the exact test follows
    spacing_kji = geometry.spacing[::-1]
    margin = np.ceil(NODE_GAP_MM / spacing_kji).astype(int) + 1
    render = node_mask(geometry, centre_ras, appearance)
    low, high = np.asarray(render.start_kji) - margin, np.asarray(render.stop_kji) + margin
    # Voxels beyond the grid count as taken, so a node never touches the grid's edge.
    local_free = np.zeros(tuple(high - low), dtype=bool)
    inner_low, inner_high = np.maximum(low, 0), np.minimum(high, geometry.shape_kji)
    local_free[_box(inner_low - low, inner_high - low)] = free_fat[_box(inner_low, inner_high)]
    local_mask = np.zeros_like(local_free)
    local_mask[_box(margin, margin + render.mask.shape)] = render.mask
    near = ndimage.distance_transform_edt(~local_mask, sampling=spacing_kji) <= NODE_GAP_MM
    return bool(local_free[near].all())


def _box(start, stop) -> tuple[slice, slice, slice]:
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))


# Directions to points deep inside any node: its axes and the diagonals between them.
_CORE_DIRECTIONS = np.array(
    [v for v in np.ndindex(3, 3, 3) if v != (1, 1, 1)], dtype=float
) - 1.0
_CORE_DIRECTIONS /= np.linalg.norm(_CORE_DIRECTIONS, axis=1, keepdims=True)


def _core_in_free_fat(geometry, free_fat, centre_ras, appearance) -> bool:
    """Whether the voxels around 26 points deep inside the node are free fat."""
    semi = appearance.semi_axes_mm * (1.0 - appearance.margin_amplitude)
    points = centre_ras + (_CORE_DIRECTIONS * semi) @ appearance.rotation.T
    kji = np.round(geometry.ras_to_ijk_points(points)).astype(int)[:, ::-1]
    if np.any(kji < 0) or np.any(kji >= free_fat.shape):
        return False
    return bool(free_fat[tuple(kji.T)].all())


def _sample_seed(rng, geometry, centre_ras, render: NodeRender) -> np.ndarray:
    """A click within 3 mm of the centre whose voxel is in the node's mask (rejection sampling)."""
    for _ in range(20):
        direction = rng.normal(size=(64, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        radius = SEED_JITTER_MM * rng.random(64) ** (1.0 / 3.0)  # uniform in the ball
        points = centre_ras + direction * radius[:, None]
        inside = _in_mask(geometry, render, points)
        if inside.any():
            return points[np.argmax(inside)]
    # The voxel nearest the centre is inside by construction (see _jittered_centre).
    nearest = np.round(geometry.ras_to_ijk_points(centre_ras))
    return geometry.ijk_to_ras_points(nearest)[0]


def _in_mask(geometry, render: NodeRender, points_ras) -> np.ndarray:
    kji = np.round(geometry.ras_to_ijk_points(points_ras)).astype(int)[:, ::-1] - render.start_kji
    ok = np.all((kji >= 0) & (kji < render.mask.shape), axis=1)
    inside = np.zeros(len(points_ras), dtype=bool)
    inside[ok] = render.mask[tuple(kji[ok].T)]
    return inside


# --- scanner ---------------------------------------------------------------------------------
def _blur(volume, geometry: VolumeGeometry) -> np.ndarray:
    """Gaussian blur of 0.6 mm (physical) along every axis."""
    return ndimage.gaussian_filter(volume, BLUR_SIGMA_MM / geometry.spacing[::-1], truncate=3.0)


def _standard_noise(rng, shape) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)

