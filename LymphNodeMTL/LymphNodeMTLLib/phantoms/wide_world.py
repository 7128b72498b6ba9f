"""The wide training world: phantom CT cases that look as varied as real CT, with the spec's labels.

docs/phantom-spec.md's appearance section is the minimum a phantom shows; the network trained only
on it meets real CT as something new: nodes pressed against liver, muscle, bowel and unenhanced
vessels with no fat between, touching nodes, bulky masses, 5 mm slices, other scanners' HU. This
generator widens every part of the image and keeps the label model (features.py) exactly, so the
probabilities a model learns here stay comparable with every other phantom of the spec.

What is wider than the spec (all appearance; P and the label come from the latent features alone):
- placement: a share of nodes abuts tissue of similar attenuation (organ, muscle, bowel wall,
  unenhanced vessel) over part of its surface, with no fat margin there; a share touches an earlier
  node (a cluster: the masks stay separate, the later node gives way where they meet); the rest sit
  in fat as in the spec.
- bulky nodes: a share is drawn with a visible short axis of 30-60 mm (long axis up to 80 mm); the
  label model reads its short axis clipped to 30 mm, the spec's own clip of s.
- shape: lobulation (a low-order surface wave of up to 35 % of the radius) on top of the spec's
  margin irregularity, so a node's outline is not only an ellipsoid.
- interior: contrast-phase enhancement of the solid tissue, heterogeneity beyond the spec's texture,
  and rim enhancement around the (necrotic) core.
- surroundings: a body with subcutaneous fat, muscle wall, spine, psoas-like muscles, organs, bowel
  loops (fluid, gas or oral-contrast lumen) and vessels, whose HU follow a contrast phase
  (non-contrast, arterial, portal venous); real CT backgrounds cropped at random positions and
  resampled to random protocols.
- scanner: HU offset and scale (calibration differences between scanners), blur 0.4-1.2 mm, noise
  5-40 HU (white or slightly correlated), thin, thick (3-5 mm) and coarse isotropic (1.5-3 mm) grids,
  any direction matrix.

The grid, the painting, the reading of a real CT, the scanner's blur and the room map are the phantom
worlds' shared scene and placement (scene_grid.py, tissue_scene.py, real_background.py, scanner.py,
node_placement.py); this module holds the wide world's own body, protocols, modes and node looks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..core.errors import InputError
from ..core.geometry import VolumeGeometry
from .features import NodeFeatures, sample_labels
from .node_renderer import (
    NodeAppearance,
    SmoothField,
    node_box,
    node_mask,
    random_rotation,
    relative_radius,
    render_node,
    sample_node_appearance,
    voxel_centres_ras,
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
from .scene_grid import grid_around, random_direction
from .tissue_scene import (
    AIR,
    BONE,
    BOWEL_WALL,
    FAT,
    LUMEN,
    LUNG,
    MUSCLE,
    SOFT_TISSUE,
    VESSEL,
    TissueScene,
    cranio_caudal_axis,
    in_ellipse,
)

# SIMILAR_CLASSES attenuate like a node (within ~40 HU of it) in at least one contrast phase;
# FORBIDDEN_CLASSES never hold a node.
SIMILAR_CLASSES = (SOFT_TISSUE, MUSCLE, BOWEL_WALL, VESSEL)
FORBIDDEN_CLASSES = (AIR, LUNG, BONE, LUMEN)
SPEC_SHORT_AXIS_CLIP_MM = 30.0  # features.py clips s here; a bulky node's label reads it so
PLACEMENT_ATTEMPTS = 80


@dataclass(frozen=True)
class WideWorldOptions:
    """Shares and ranges of the wide world; the defaults are the training recipe's.

    Attributes:
        contact_share: nodes placed against similar-attenuation tissue (no fat margin there).
        cluster_share: nodes placed touching an earlier node of the case.
        bulky_share: nodes drawn bulky (visible short axis in bulky_short_axis_mm).
        bulky_short_axis_mm: visible short-axis range of a bulky node.
        max_long_axis_mm: the longest visible axis any node gets.
        lobulated_share: nodes with a lobulated outline.
        rim_share: nodes with an enhancing rim.
        thick_share, coarse_share: grids with 3-5 mm slices, and coarse isotropic 1.5-3 mm grids;
            the rest are thin-slice (0.6-1.5 mm slices).
    """

    contact_share: float = 0.45
    cluster_share: float = 0.2
    bulky_share: float = 0.08
    bulky_short_axis_mm: tuple[float, float] = (30.0, 60.0)
    max_long_axis_mm: float = 80.0
    lobulated_share: float = 0.4
    rim_share: float = 0.25
    thick_share: float = 0.35
    coarse_share: float = 0.25


# Contrast phases: (organ HU, vessel HU, bowel-wall HU, node enhancement HU) ranges.
PHASES = {
    "non_contrast": ((40.0, 60.0), (35.0, 50.0), (30.0, 50.0), (0.0, 5.0)),
    "arterial": ((55.0, 85.0), (200.0, 350.0), (45.0, 70.0), (5.0, 25.0)),
    "portal_venous": ((90.0, 130.0), (130.0, 200.0), (60.0, 90.0), (10.0, 40.0)),
}
# Texture amplitude (HU) per tissue class, in tissue_scene.py's order.
TEXTURE_HU = np.array([0, 15, 8, 3, 25, 6, 6, 5, 60, 0], dtype=np.float32)


def generate_wide_case(
    rng: np.random.Generator,
    n_nodes: int,
    background=None,
    options: WideWorldOptions = WideWorldOptions(),
    spacing=None,
    direction=None,
) -> PhantomCase:
    """One wide-world case.

    Args:
        rng: the only source of randomness.
        n_nodes: nodes to insert (fewer are placed when a real background holds no room for all:
            the count placed is in metadata["nodes_placed"]; at least one, else InputError).
        background: None (a synthetic body), a path SimpleITK reads or an (image, geometry) pair of
            a real CT: a random part of it, resampled to a random protocol, holds the nodes.
        options: shares and ranges (WideWorldOptions).
        spacing, direction: (i, j, k) mm and 3x3 LPS direction of the grid; default random.
    """
    protocol, spacing = _protocol(rng, options, spacing)
    direction = _wide_direction(rng) if direction is None else np.asarray(direction, dtype=float)
    if background is None:
        scene, enhancement_hu, metadata = _synthetic_scene(rng, spacing, direction)
    else:
        scene, enhancement_hu, metadata = _real_scene(rng, background, spacing, direction)
    metadata["protocol"] = protocol
    label_map, nodes, node_info = _place_nodes(rng, scene, enhancement_hu, n_nodes, options)
    image = _scanner(rng, scene, label_map, metadata)
    metadata.update(spacing=tuple(float(s) for s in scene.geometry.spacing), nodes_placed=len(nodes),
                    node_placement=node_info)
    return PhantomCase(image.astype(np.float32), scene.geometry, label_map, nodes, metadata)


# --- grid ------------------------------------------------------------------------------------
def _protocol(rng, options: WideWorldOptions, spacing):
    """(protocol name, (i, j, k) spacing): thin, thick-slice or coarse isotropic."""
    u = rng.random()
    if u < options.thick_share:
        name, default = "thick", (rng.uniform(0.6, 1.0),) * 2 + (rng.uniform(3.0, 5.0),)
    elif u < options.thick_share + options.coarse_share:
        name, default = "coarse", (rng.uniform(1.5, 3.0),) * 3
    else:
        name, default = "thin", (rng.uniform(0.6, 1.0),) * 2 + (rng.uniform(0.6, 1.5),)
    return name, tuple(float(s) for s in (default if spacing is None else spacing))


def _wide_direction(rng) -> np.ndarray:
    """Any orientation: half the spec's mix (mostly axial), half a uniformly random rotation
    with random axis flips (a left-handed grid included)."""
    if rng.random() < 0.5:
        return random_direction(rng)
    return random_rotation(rng) * rng.choice([-1.0, 1.0], 3)[None, :]


def _field_of_view(rng, spacing) -> np.ndarray:
    """(i, j, k) mm: 130-170 mm across; along the slices more where voxels are cheap."""
    across = rng.uniform(130.0, 170.0)
    along = rng.uniform(110.0, 150.0) if float(np.prod(spacing)) < 1.5 else rng.uniform(140.0, 180.0)
    return np.array([across, across, along])


# --- synthetic body --------------------------------------------------------------------------
def _synthetic_scene(rng, spacing, direction):
    """(scene, node enhancement HU, metadata) of a body on a random grid and contrast phase."""
    fov = _field_of_view(rng, spacing)
    geometry = grid_around(rng.uniform(-60.0, 60.0, 3), fov, spacing, direction)
    phase = str(rng.choice(list(PHASES)))
    organ_hu, vessel_hu, wall_hu, enhancement = PHASES[phase]
    chest = bool(rng.random() < 0.4)
    scene = TissueScene.empty(geometry)
    r, a = scene.axial_coordinates()
    half = 0.5 * fov[0]
    body = (half * rng.uniform(0.88, 1.05), half * rng.uniform(0.72, 0.9))
    skin = (body[0] - rng.uniform(1.5, 3.0), body[1] - rng.uniform(1.5, 3.0))
    muscle_outer = np.subtract(skin, rng.uniform(5.0, 20.0))  # subcutaneous fat between
    inner = np.subtract(muscle_outer, rng.uniform(5.0, 12.0))
    fat_hu = rng.uniform(-120.0, -85.0)
    muscle_hu = rng.uniform(45.0, 65.0)
    scene.paint(in_ellipse(r, a, (0, 0), body), MUSCLE, muscle_hu)  # skin reads as soft tissue
    scene.paint(in_ellipse(r, a, (0, 0), skin), FAT, fat_hu)
    scene.paint(in_ellipse(r, a, (0, 0), muscle_outer), MUSCLE, muscle_hu)
    scene.paint(in_ellipse(r, a, (0, 0), inner), FAT, fat_hu)
    # spine behind the centre, and muscles beside it (psoas, paraspinal)
    spine_ra = (rng.uniform(-5, 5), -inner[1] + rng.uniform(12.0, 22.0))
    spine = in_ellipse(r, a, spine_ra, (rng.uniform(14, 20), rng.uniform(12, 17)))
    for side in (-1.0, 1.0):
        muscle = in_ellipse(r, a, (spine_ra[0] + side * rng.uniform(22, 35), spine_ra[1] + rng.uniform(0, 12)),
                            (rng.uniform(10, 18), rng.uniform(8, 14)))
        scene.paint(muscle & (scene.tissue == FAT), MUSCLE, muscle_hu + rng.uniform(-5, 5))
    if chest:
        for side in (-1.0, 1.0):
            lung = in_ellipse(r, a, (side * 0.55 * inner[0], rng.uniform(-0.1, 0.1) * inner[1]),
                              inner * np.array([rng.uniform(0.3, 0.38), rng.uniform(0.65, 0.8)]))
            scene.paint(lung & (scene.tissue == FAT), LUNG, rng.uniform(-880.0, -820.0))
    scene.paint(spine & (scene.tissue != AIR), BONE, rng.uniform(350.0, 700.0))
    for _ in range(rng.integers(1, 4)):
        _organ(rng, scene, inner, rng.uniform(*organ_hu))
    if not chest or rng.random() < 0.3:
        for _ in range(rng.integers(1, 4)):
            _bowel_loop(rng, scene, inner, rng.uniform(*wall_hu))
    for _ in range(rng.integers(2, 6)):
        _vessel(rng, scene, inner, rng.uniform(*vessel_hu))
    scene.add_texture(rng, TEXTURE_HU, correlation_mm=rng.uniform(3.0, 8.0))
    metadata = {"background": "synthetic", "chest": chest, "phase": phase}
    return scene, float(rng.uniform(*enhancement)), metadata


def _inner_point(rng, centre, inner, spread=0.75, s_range=50.0):
    angle = rng.uniform(0.0, 2.0 * np.pi)
    radius = spread * np.sqrt(rng.random())
    return centre + np.array([inner[0] * radius * np.cos(angle), inner[1] * radius * np.sin(angle),
                              rng.uniform(-s_range, s_range)])


def _organ(rng, scene: TissueScene, inner, value):
    """A rotated soft-tissue ellipsoid (liver, spleen, kidney, heart) inside the body's fat."""
    semi = rng.uniform(10.0, 35.0, 3)
    position = _inner_point(rng, scene.centre_ras, inner)
    rotation = random_rotation(rng)
    reach = float(semi.max())
    box, (r, a, s) = scene.local_coordinates(position - reach, position + reach, position)
    local = [rotation[0, c] * r + rotation[1, c] * a + rotation[2, c] * s for c in range(3)]
    inside = sum((x / float(h)) ** 2 for x, h in zip(local, semi)) <= 1.0
    scene.paint(inside & np.isin(scene.tissue[box], (FAT, SOFT_TISSUE)), SOFT_TISSUE, value, box)


def _bowel_loop(rng, scene: TissueScene, inner, wall_hu):
    """A bowel loop: a wandering tube of spheres with a 2-4 mm wall around a fluid, gas or
    oral-contrast lumen."""
    radius = rng.uniform(7.0, 15.0)
    wall = rng.uniform(2.0, 4.0)
    lumen_hu = float(rng.choice([rng.uniform(0.0, 25.0), -1000.0, rng.uniform(200.0, 400.0)], p=[0.5, 0.3, 0.2]))
    point = _inner_point(rng, scene.centre_ras, inner, spread=0.6)
    heading = rng.normal(size=3)
    for _ in range(rng.integers(6, 14)):
        heading = heading / np.linalg.norm(heading) + 0.6 * rng.normal(size=3)
        heading /= np.linalg.norm(heading)
        point = point + heading * radius * 0.8
        box, (r, a, s) = scene.local_coordinates(point - radius, point + radius, point)
        d2 = r**2 + a**2 + s**2
        fat = np.isin(scene.tissue[box], (FAT, BOWEL_WALL))
        scene.paint((d2 <= radius**2) & fat, BOWEL_WALL, wall_hu, box)
        lumen = (d2 <= (radius - wall) ** 2) & np.isin(scene.tissue[box], (BOWEL_WALL, LUMEN))
        scene.paint(lumen, LUMEN, lumen_hu, box)


def _vessel(rng, scene: TissueScene, inner, value):
    """A straight tube, mostly cranio-caudal; it runs over fat, organs and muscle alike."""
    radius = rng.uniform(2.5, 12.0)
    axis = cranio_caudal_axis(rng, any_direction_share=0.35)
    point = _inner_point(rng, scene.centre_ras, inner, spread=0.8, s_range=0.0)
    box, in_tube = scene.straight_tube(point, axis, radius)
    scene.paint(in_tube & np.isin(scene.tissue[box], (FAT, SOFT_TISSUE, MUSCLE)), VESSEL, value, box)


# --- real background -------------------------------------------------------------------------
def _real_scene(rng, background, spacing, direction):
    """(scene, node enhancement HU, metadata) of a random part of a real CT on a random protocol."""
    array, geometry, source = read_background(background)
    kept = rng.random() < 0.4  # keep the scan's own slices and orientation sometimes
    if kept:
        _, own_spacing, own_direction = geometry.lps_terms()
        spacing, direction = tuple(float(v) for v in own_spacing), np.asarray(own_direction).reshape(3, 3)
    body = np.argwhere(array[:: 4, :: 4, :: 4] > -300.0) * 4
    centre_kji = body[rng.integers(len(body))] if len(body) else np.asarray(array.shape) // 2
    centre_ras = geometry.ijk_to_ras_points(np.asarray(centre_kji[::-1], dtype=float))[0]
    target = grid_around(centre_ras, _field_of_view(rng, spacing), spacing, direction)
    scene = real_ct_scene(resample_onto(array, geometry, target), target)
    return scene, float(rng.uniform(0.0, 25.0)), {"background": source, "own_grid": bool(kept)}


# --- nodes -----------------------------------------------------------------------------------
def _place_nodes(rng, scene: TissueScene, enhancement_hu: float, n_nodes: int, options: WideWorldOptions):
    """Place and draw up to `n_nodes` nodes into `scene` (in place), largest first, each in its mode
    (cluster, contact or fat; a mode without room gives way, a node no mode has room for is dropped).

    Returns (label map, the nodes' truth by mask value, each node's placement record).
    """
    geometry = scene.geometry
    features = features_largest_first(rng, n_nodes)
    label_map = np.zeros(geometry.shape_kji, dtype=np.int16)
    allowed = ~np.isin(scene.tissue, FORBIDDEN_CLASSES)
    clear_border(allowed)
    fat = scene.tissue == FAT
    similar = np.isin(scene.tissue, SIMILAR_CLASSES)
    maps = _ContactMaps(fat & allowed, similar, allowed, geometry)
    placed, info = [], []
    for drawn in features:
        label_features, visible, bulky = _visible_features(rng, drawn, options)
        mode = _mode(rng, options, bool(placed))
        for _ in range(3):  # a mode with no room gives way to the next, then the node is dropped
            result = _try_place(rng, scene, label_map, allowed, fat, similar, maps, placed, visible, mode, options)
            if result is not None:
                break
            mode = {"cluster": "contact", "contact": "fat", "fat": "contact"}[mode]
        if result is None:
            continue
        centre, appearance, box, mask = result
        value = len(placed) + 1
        _draw(rng, scene, enhancement_hu, label_map, centre, appearance, box, mask, value, options)
        own = label_map[box] == value
        placed.append((value, centre, label_features, appearance, box, own))
        info.append({"mode": mode, "bulky": bulky, "visible_short_axis_mm": 2 * float(appearance.semi_axes_mm[0])})
    if not placed:
        raise InputError("no room for a phantom node in this background; use a larger field of view")
    order = rng.permutation(len(placed)) + 1  # so mask values say nothing about size or order
    remapped = np.zeros_like(label_map)
    for (value, *_), new in zip(placed, order):
        remapped[label_map == value] = new
    probabilities = [f.probability for _, _, f, _, _, _ in placed]
    labels = sample_labels(rng, probabilities)
    nodes = []
    for (value, centre, f, appearance, box, own), new, label, extra in zip(placed, order, labels, info):
        seed = _seed(rng, geometry, centre, box, remapped[box] == new)
        extra["mask_value"] = int(new)
        nodes.append(PhantomNode.drawn(new, centre, seed, f, label, appearance))
    by_value = sorted(zip(nodes, info), key=lambda pair: pair[0].mask_value)
    return remapped, [n for n, _ in by_value], [i for _, i in by_value]


def _mode(rng, options: WideWorldOptions, has_nodes: bool) -> str:
    u = rng.random()
    if has_nodes and u < options.cluster_share:
        return "cluster"
    if u < options.cluster_share + options.contact_share:
        return "contact"
    return "fat"


def _visible_features(rng, features: NodeFeatures, options: WideWorldOptions):
    """(label features, features the image shows, bulky?).

    A bulky node shows a short axis beyond the spec's range; its label features hold the spec's
    clip of s (30 mm) instead, so the label model is the spec's and still grows with what the image
    shows. Every other latent feature is the one drawn; the long axis is capped for the image only.
    """
    if rng.random() >= options.bulky_share:
        ratio = min(features.axis_ratio, options.max_long_axis_mm / features.short_axis_mm)
        return features, dataclasses.replace(features, axis_ratio=ratio), False
    short = float(rng.uniform(*options.bulky_short_axis_mm))
    ratio = min(features.axis_ratio, options.max_long_axis_mm / short)
    label_features = dataclasses.replace(features, short_axis_mm=SPEC_SHORT_AXIS_CLIP_MM)
    return label_features, dataclasses.replace(features, short_axis_mm=short, axis_ratio=ratio), True


class _ContactMaps(RoomMap):
    """The room map (room: distance to anything a node may not cover) and, on the same blocks, which
    are all fat and how far (mm) similar-attenuation tissue is: where each placement mode looks."""

    def __init__(self, fat, similar, allowed, geometry: VolumeGeometry):
        super().__init__(allowed, geometry)
        self.fat = self.all_of(fat)
        self.to_similar_mm = self.distance_mm(~self.any_of(similar))


def _try_place(rng, scene, label_map, allowed, fat, similar, maps: _ContactMaps, placed, features, mode, options):
    """(centre, appearance, box, mask) of a node placed in `mode`, or None."""
    geometry = scene.geometry
    for _ in range(PLACEMENT_ATTEMPTS):
        appearance = _widen_appearance(rng, sample_node_appearance(rng, features), options)
        radius = appearance.min_radius_mm
        if mode == "cluster":
            value, centre0, _, other, _, _ = placed[rng.integers(len(placed))]
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            reach = _radius_along(other, direction) + _radius_along(appearance, -direction)
            centre = centre0 + direction * reach * rng.uniform(0.8, 0.95)
        else:
            if mode == "contact":
                candidates = maps.fat & (maps.to_similar_mm >= 0.2 * radius) & (maps.to_similar_mm <= 0.9 * radius)
            else:
                candidates = maps.fat & (maps.to_similar_mm >= radius + NODE_GAP_MM)
            candidates = np.flatnonzero(candidates & maps.has_room(radius))
            if len(candidates) == 0:
                return None
            voxel = maps.random_voxel(rng, candidates)
            centre = geometry.ijk_to_ras_points(voxel[::-1].astype(float) + rng.uniform(-0.5, 0.5, 3))[0]
        gap_mm = NODE_GAP_MM if mode == "fat" else 0.0
        outer_semi_axes = appearance.semi_axes_mm * (1.0 + appearance.margin_amplitude) + gap_mm
        if not probes_inside(geometry, fat if mode == "fat" else allowed, centre, appearance, outer_semi_axes):
            continue  # cheap early rejection; the exact tests follow
        render = node_mask(geometry, centre, appearance)
        box = render.slices()
        mask = render.mask
        if mask.sum() < 4 or not _whole_in_grid(geometry, centre, appearance, render):
            continue
        if not allowed[box][mask].all():
            continue
        others = label_map[box][mask]
        if mode == "cluster":
            mask = mask & (label_map[box] == 0)  # the earlier node keeps its voxels
            if mask.sum() < 0.6 * render.mask.sum() or not _touches(label_map[box] > 0, mask):
                continue
        elif others.any():
            continue
        shell = gap_shell(mask, geometry) & ~mask
        near_other = (label_map[box] > 0) & shell
        if mode != "cluster" and near_other.any():
            continue  # only clusters touch
        in_fat = fat[box][mask].mean()
        if mode == "fat" and not fat[box][shell | mask].mean() > 0.97:
            continue
        if mode == "contact" and not (similar[box][shell | mask].any() and in_fat >= 0.4):
            continue
        return centre, appearance, box, mask
    return None


def _radius_along(appearance: NodeAppearance, direction) -> float:
    """Ellipsoid radius (mm) of a node along a RAS direction (margin ignored)."""
    local = appearance.rotation.T @ direction
    return float(1.0 / np.linalg.norm(local / appearance.semi_axes_mm))


def _whole_in_grid(geometry, centre, appearance, render) -> bool:
    """Whether the node's whole box lies inside the grid (a node cut by the edge is no training case)."""
    start, stop = node_box(geometry, centre, appearance)
    return all(a >= 1 for a in start) and all(b <= n - 1 for b, n in zip(stop, geometry.shape_kji))


def _touches(other, mask) -> bool:
    return bool((ndimage.binary_dilation(mask) & other).any())


def _widen_appearance(rng, appearance: NodeAppearance, options: WideWorldOptions) -> NodeAppearance:
    """Lobulation on top of the spec's margin: one bounded field holding both waves."""
    if rng.random() >= options.lobulated_share:
        return appearance
    lobes = float(rng.uniform(0.1, 0.35))
    spec = appearance.margin_amplitude
    lobe_field = SmoothField.random(rng, 3, (4.0, 8.0))  # long waves over the unit sphere: lobes
    total = spec + lobes
    field = SmoothField(
        np.concatenate([appearance.margin_field.frequencies, lobe_field.frequencies]),
        np.concatenate([appearance.margin_field.phases, lobe_field.phases]),
        np.concatenate([appearance.margin_field.weights * spec / total, lobe_field.weights * lobes / total]),
    )
    return dataclasses.replace(appearance, margin_amplitude=total, margin_field=field)


def _draw(rng, scene: TissueScene, enhancement_hu, label_map, centre, appearance, box, mask, value, options):
    """Write the node's HU (its solid tissue enhanced by `enhancement_hu`) and mask; an earlier
    node's voxels are left as they are."""
    enhanced = dataclasses.replace(appearance, solid_hu=appearance.solid_hu + enhancement_hu)
    keep = label_map[box] > 0
    before = scene.hu[box].copy()
    spill = np.zeros(scene.hu.shape, dtype=bool)
    spill[box] = ~keep & ~np.isin(scene.tissue[box], FORBIDDEN_CLASSES)
    render = render_node(scene.hu, scene.geometry, centre, enhanced, spill_allowed=spill)
    if tuple(s.start for s in render.slices()) != tuple(s.start for s in box):
        raise AssertionError("node box changed between placement and drawing")
    view = scene.hu[box]
    view[keep] = before[keep]
    final = render.mask & ~keep
    label_map[box][final] = value
    # appearance beyond the spec: rim enhancement and extra heterogeneity, on the mask only
    points = voxel_centres_ras(scene.geometry, *_box_bounds(box))
    local = (points - np.asarray(centre)) @ appearance.rotation
    relative, _ = relative_radius(appearance, local)
    extra = np.zeros(view.shape, dtype=np.float32)
    if rng.random() < options.rim_share:
        extra += np.where(relative >= rng.uniform(0.65, 0.85), rng.uniform(15.0, 40.0), 0.0).astype(np.float32)
    if rng.random() < 0.5:
        texture = SmoothField.random(rng, 8, (2.0, 6.0))
        extra += (rng.uniform(5.0, 25.0) * texture(local)).astype(np.float32)
    view[final] += extra[final]
    scene.tissue[box][final] = SOFT_TISSUE  # a later node can abut this one as similar tissue


def _box_bounds(box):
    return tuple(s.start for s in box), tuple(s.stop for s in box)


def _seed(rng, geometry, centre, box, mask) -> np.ndarray:
    """A click inside the mask within 3 mm of the centre (the voxel deepest inside when none is)."""
    points = voxel_centres_ras(geometry, *_box_bounds(box))[mask]
    near = np.linalg.norm(points - np.asarray(centre), axis=1) <= SEED_JITTER_MM
    if near.any():
        return points[np.flatnonzero(near)[rng.integers(near.sum())]]
    depth = ndimage.distance_transform_edt(mask, sampling=geometry.spacing[::-1])
    return voxel_centres_ras(geometry, *_box_bounds(box))[np.unravel_index(np.argmax(depth), depth.shape)]


# --- scanner ---------------------------------------------------------------------------------
def _scanner(rng, scene: TissueScene, label_map, metadata: dict) -> np.ndarray:
    """Blur, noise and HU calibration: synthetic scenes whole, real CT only where nodes changed it."""
    blur_sigma_mm = float(rng.uniform(0.4, 1.2))
    noise_sigma = float(rng.uniform(5.0, 40.0))
    correlated = bool(rng.random() < 0.5)
    noise = rng.standard_normal(scene.hu.shape, dtype=np.float32)
    if correlated:  # scanner noise is not white: smooth it in-plane a little, keep its SD
        noise = ndimage.gaussian_filter(noise, (0.0, 0.7, 0.7))
        noise /= max(float(noise.std()), 1e-6)
    if scene.original is None:
        noise_hu = noise_sigma * noise
    else:  # the real CT keeps its own noise; the nodes get the case's
        nodes = blur_mm((label_map > 0).astype(np.float32), scene.geometry, blur_sigma_mm)
        noise_hu = noise_sigma * nodes * noise
    image = scanned_image(scene, blur_sigma_mm, noise_hu)
    scale, offset = float(rng.uniform(0.95, 1.05)), float(rng.uniform(-15.0, 15.0))
    image = image * scale + offset
    metadata.update(blur_mm=blur_sigma_mm, noise_sigma_hu=noise_sigma, correlated_noise=correlated,
                    hu_scale=scale, hu_offset=offset)
    return image
