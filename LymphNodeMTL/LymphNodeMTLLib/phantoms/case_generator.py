"""Whole phantom CT cases of the spec: a body (or a real CT), nodes placed in its fat, scanner blur and noise.

Follows docs/phantom-spec.md (v1). All randomness comes from the caller's np.random.Generator, so a
seed fixes a case exactly. The grid, the painting, the reading of a real CT, the scanner's blur and
the room map are the phantom worlds' shared scene and placement (scene_grid.py, tissue_scene.py,
real_background.py, scanner.py, node_placement.py); this module holds the spec's own body and grids,
and its placement: nodes only in free fat, with 2 mm of it around each.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import InputError
from ..core.geometry import VolumeGeometry
from .features import NodeFeatures, sample_labels
from .node_renderer import (
    NodeRender,
    node_mask,
    render_node,
    sample_node_appearance,
)
from .node_placement import (
    NODE_GAP_MM,
    SEED_JITTER_MM,
    RoomMap,
    clear_border,
    features_largest_first,
    gap_shell,
    probes_inside,
)
from .phantom_case import PhantomCase, PhantomNode
from .real_background import read_background, real_ct_scene, resample_onto
from .scanner import blur_mm, scanned_image
from .scene_grid import box_slices, grid_around, grid_centre_ras, random_direction
from .tissue_scene import AIR, FAT, LUNG, SOFT_TISSUE, VESSEL, TissueScene, cranio_caudal_axis, in_ellipse

DEFAULT_FIELD_OF_VIEW_MM = (128.0, 128.0, 100.0)  # along i, j, k
BLUR_SIGMA_MM = 0.6
NOISE_SIGMA_HU = (10.0, 25.0)
PLACEMENT_ATTEMPTS = 60  # positions and orientations tried before a node's features are redrawn
FEATURE_REDRAWS = 20

# Base HU and texture amplitude of the body's tissue classes (AIR, FAT, SOFT_TISSUE, VESSEL, LUNG).
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
            (image [k, j, i], VolumeGeometry) pair (left as it is); nodes then go into its fat.
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
    scene, metadata = phantom_scene(rng, background, spacing, direction, chest, field_of_view_mm)
    geometry = scene.geometry

    free_fat = scene.tissue == FAT
    label_map, nodes, renders, redraws = place_nodes(rng, scene.hu, geometry, free_fat, n_nodes)
    image, noise_sigma = scan_scene(rng, scene, renders)
    metadata.update(
        noise_sigma_hu=noise_sigma,
        spacing=tuple(float(s) for s in geometry.spacing),
        feature_redraws=redraws,
    )
    return PhantomCase(image.astype(np.float32), geometry, label_map, nodes, metadata)


def phantom_scene(rng, background=None, spacing=None, direction=None, chest: bool | None = None,
                  field_of_view_mm=None) -> tuple[TissueScene, dict]:
    """The case's body without nodes, and what it is (arguments as `generate_phantom_case`)."""
    if background is None:
        if field_of_view_mm is None:
            field_of_view_mm = DEFAULT_FIELD_OF_VIEW_MM
        geometry = _synthetic_geometry(rng, spacing, direction, field_of_view_mm)
        chest = bool(rng.random() < 0.5) if chest is None else bool(chest)
        contrast = bool(rng.random() < 0.5)
        scene = _synthetic_scene(rng, geometry, chest, contrast)
        return scene, {"background": "synthetic", "chest": chest, "contrast": contrast}
    scene, source = _real_scene(background, field_of_view_mm, spacing, direction)
    return scene, {"background": source}


def scan_scene(rng, scene: TissueScene, renders) -> tuple[np.ndarray, float]:
    """(the CT the scanner gives of the scene with its drawn nodes, the noise SD in HU)."""
    noise_sigma = float(rng.uniform(*NOISE_SIGMA_HU))
    noise = rng.standard_normal(scene.hu.shape, dtype=np.float32)
    if scene.original is not None:  # the real CT keeps its own noise; the nodes get the case's
        noise = blur_mm(_node_coverage(renders, scene.hu.shape), scene.geometry, BLUR_SIGMA_MM) * noise
    return scanned_image(scene, BLUR_SIGMA_MM, noise_sigma * noise), noise_sigma


# --- grid ------------------------------------------------------------------------------------
def _synthetic_geometry(rng, spacing, direction, field_of_view_mm) -> VolumeGeometry:
    if spacing is None:
        in_plane = rng.uniform(0.6, 1.0)
        spacing = (in_plane, in_plane, rng.uniform(0.7, 5.0))
    if direction is None:
        direction = random_direction(rng)
    centre_ras = rng.uniform(-50.0, 50.0, 3)  # away from the origin, to catch origin mistakes
    return grid_around(centre_ras, field_of_view_mm, spacing, direction)


# --- synthetic body --------------------------------------------------------------------------
def _synthetic_scene(rng, geometry: VolumeGeometry, chest: bool, contrast: bool) -> TissueScene:
    """A body: wall, fat, organs, vessels, lungs.

    The body is an elliptic cylinder along S, centred in the grid, sized from the field of view;
    its wall, organs and vessels scale with it, so a small field of view still leaves fat.
    """
    scene = TissueScene.empty(geometry)
    r, a = scene.axial_coordinates()
    half = 0.5 * float(np.median(geometry.spacing * np.asarray(geometry.shape_kji[::-1])))
    scale = half / (0.5 * DEFAULT_FIELD_OF_VIEW_MM[0])
    body_axes = (half * rng.uniform(0.85, 0.98), half * rng.uniform(0.70, 0.85))
    wall = scale * rng.uniform(4.0, 10.0)
    inner_axes = np.subtract(body_axes, wall)
    scene.paint(in_ellipse(r, a, (0.0, 0.0), body_axes), SOFT_TISSUE, TISSUE_HU[SOFT_TISSUE])
    scene.paint(in_ellipse(r, a, (0.0, 0.0), inner_axes), FAT, TISSUE_HU[FAT])
    if chest:
        for side in (-1.0, 1.0):
            centre_ra = (side * 0.58 * inner_axes[0], rng.uniform(-0.1, 0.05) * inner_axes[1])
            lung_axes = inner_axes * np.array([rng.uniform(0.28, 0.34), rng.uniform(0.65, 0.8)])
            lung = in_ellipse(r, a, centre_ra, lung_axes) & (scene.tissue == FAT)
            scene.paint(lung, LUNG, TISSUE_HU[LUNG])
    for _ in range(rng.integers(1, 4)):
        _add_organ(rng, scene, inner_axes, scale)
    for _ in range(rng.integers(2, 6)):
        vessel_hu = rng.uniform(150.0, 250.0) if contrast else TISSUE_HU[VESSEL]
        _add_vessel(rng, scene, inner_axes, scale, vessel_hu)
    scene.add_texture(rng, TISSUE_TEXTURE_HU, correlation_mm=6.0)
    return scene


def _add_organ(rng, scene: TissueScene, inner_axes, scale):
    """A soft-tissue ellipsoid (organ, muscle, heart) somewhere inside the body."""
    semi = scale * rng.uniform(8.0, 18.0, 3)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    position = scene.centre_ras + np.array(
        [
            0.7 * inner_axes[0] * np.sqrt(rng.random()) * np.cos(angle),
            0.7 * inner_axes[1] * np.sqrt(rng.random()) * np.sin(angle),
            scale * rng.uniform(-40.0, 40.0),
        ]
    )
    box, (r, a, s) = scene.local_coordinates(position - semi, position + semi, position)
    sr, sa, ss = (float(x) for x in semi)
    inside = (r / sr) ** 2 + (a / sa) ** 2 + (s / ss) ** 2 <= 1.0
    scene.paint(inside & (scene.tissue[box] != AIR), SOFT_TISSUE, TISSUE_HU[SOFT_TISSUE], box)


def _add_vessel(rng, scene: TissueScene, inner_axes, scale, vessel_hu):
    """A straight tube through the volume: mostly cranio-caudal, one in three in any direction."""
    radius = scale * rng.uniform(2.5, 7.0)
    axis = cranio_caudal_axis(rng, any_direction_share=1.0 / 3.0)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    point = scene.centre_ras + np.array(
        [0.8 * inner_axes[0] * np.cos(angle), 0.8 * inner_axes[1] * np.sin(angle), 0.0]
    ) * np.sqrt(rng.random())
    box, in_tube = scene.straight_tube(point, axis, radius)
    scene.paint(in_tube & (scene.tissue[box] != AIR), VESSEL, vessel_hu, box)


# --- real background -------------------------------------------------------------------------
def _real_scene(background, field_of_view_mm, spacing, direction):
    """(scene, source) of the real CT: cropped to the field of view, resampled if asked."""
    array, geometry, source = read_background(background)
    if spacing is None and direction is None:
        if field_of_view_mm is not None:
            array, geometry = _crop_centre(array, geometry, field_of_view_mm)
    else:
        target = _resampling_grid(geometry, field_of_view_mm, spacing, direction)
        array, geometry = resample_onto(array, geometry, target), target
    return real_ct_scene(array, geometry), source


def _crop_centre(array, geometry: VolumeGeometry, field_of_view_mm):
    wanted = np.ceil(np.asarray(field_of_view_mm) / geometry.spacing).astype(int)[::-1]
    size = np.minimum(wanted, geometry.shape_kji)
    start = (np.asarray(geometry.shape_kji) - size) // 2
    stop = start + size
    return np.ascontiguousarray(array[box_slices(start, stop)]), geometry.crop(tuple(start), tuple(stop))


def _resampling_grid(geometry: VolumeGeometry, field_of_view_mm, spacing, direction) -> VolumeGeometry:
    """A grid of the field of view (default the background's extent) centred on the background's centre."""
    _, own_spacing, own_direction = geometry.lps_terms()
    spacing = np.asarray(own_spacing if spacing is None else spacing, dtype=float)
    direction = own_direction if direction is None else direction
    if field_of_view_mm is None:
        field_of_view_mm = geometry.spacing * np.asarray(geometry.shape_kji[::-1])
    return grid_around(grid_centre_ras(geometry), field_of_view_mm, spacing, direction)


def _node_coverage(renders, shape) -> np.ndarray:
    """How much of each voxel the nodes' HU covers (partial volume included)."""
    coverage = np.zeros(shape, dtype=np.float32)
    for render in renders:
        coverage[render.slices()] += render.coverage
    return coverage


# --- nodes -----------------------------------------------------------------------------------
def place_nodes(rng, hu, geometry, free_fat, n_nodes, features=None):
    """Place and draw `n_nodes` nodes into `hu` (in place), largest first; `features`: the nodes'
    features (placed in the order given), drawn from the spec's distributions when None. Returns
    (label map, truth per node and its render, both in mask-value order, feature redraws).

    `free_fat` (modified) marks fat not yet taken by a node; a node and the 2 mm around it must
    lie in it. When a node fits nowhere after many positions and orientations its features are
    redrawn (counted in the returned `redraws`); this only happens to very large nodes.
    """
    if features is None:
        features = features_largest_first(rng, n_nodes)
    mask_values = rng.permutation(n_nodes) + 1  # so ids say nothing about size
    label_map = np.zeros(geometry.shape_kji, dtype=np.int16)
    clear_border(free_fat)  # nodes keep a voxel off the grid's faces, so none is cut off
    room = RoomMap(free_fat, geometry)
    nodes, renders, redraws = [], [], 0
    for value, node_features in zip(mask_values, features):
        placed = _try_place(rng, geometry, free_fat, room, node_features)
        if placed is None:  # the map ignores the nodes placed since it was made: refresh, retry
            room = RoomMap(free_fat, geometry)
            placed = _try_place(rng, geometry, free_fat, room, node_features)
        while placed is None:
            redraws += 1
            if redraws > FEATURE_REDRAWS * n_nodes:
                raise InputError(
                    f"no room for {n_nodes} phantom nodes with 2 mm of fat around each; use fewer "
                    "nodes, a larger field of view or a background with more fat"
                )
            node_features = features_largest_first(rng, 1)[0]
            placed = _try_place(rng, geometry, free_fat, room, node_features)
        centre, appearance = placed
        render = render_node(hu, geometry, centre, appearance, spill_allowed=free_fat)
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
    order = sorted(range(len(truth)), key=lambda n: truth[n].mask_value)
    return label_map, [truth[n] for n in order], [renders[n] for n in order], redraws


def _try_place(rng, geometry, free_fat, room: RoomMap, features: NodeFeatures):
    """(centre_ras, appearance) of a fitting position and orientation, or None."""
    blocks = None
    for _ in range(PLACEMENT_ATTEMPTS):
        appearance = sample_node_appearance(rng, features)
        if blocks is None:  # the inscribed radius does not depend on the orientation
            blocks = np.flatnonzero(room.has_room(appearance.min_radius_mm + NODE_GAP_MM))
            if len(blocks) == 0:
                return None
        voxel_kji = room.random_voxel(rng, blocks)
        if not free_fat[tuple(voxel_kji)]:
            continue
        centre = _jittered_centre(rng, geometry, voxel_kji, appearance)
        if fits_in_fat(geometry, free_fat, centre, appearance):
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


def fits_in_fat(geometry, free_fat, centre_ras, appearance) -> bool:
    """Whether the node and every voxel within 2 mm of it lie in free fat (inside the grid)."""
    core_semi_axes = appearance.semi_axes_mm * (1.0 - appearance.margin_amplitude)  # surely inside
    if not probes_inside(geometry, free_fat, centre_ras, appearance, core_semi_axes):
        return False  # cheap early rejection; the exact test follows
    spacing_kji = geometry.spacing[::-1]
    margin = np.ceil(NODE_GAP_MM / spacing_kji).astype(int) + 1
    render = node_mask(geometry, centre_ras, appearance)
    low, high = np.asarray(render.start_kji) - margin, np.asarray(render.stop_kji) + margin
    # Voxels beyond the grid count as taken, so a node never touches the grid's edge.
    local_free = np.zeros(tuple(high - low), dtype=bool)
    inner_low, inner_high = np.maximum(low, 0), np.minimum(high, geometry.shape_kji)
    local_free[box_slices(inner_low - low, inner_high - low)] = free_fat[box_slices(inner_low, inner_high)]
    local_mask = np.zeros_like(local_free)
    local_mask[box_slices(margin, margin + render.mask.shape)] = render.mask
    return bool(local_free[gap_shell(local_mask, geometry)].all())


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
