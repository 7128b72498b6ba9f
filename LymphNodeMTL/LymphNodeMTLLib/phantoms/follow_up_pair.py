"""A baseline phantom CT and its follow-up with known truth: the patient moved (rigid, up to 20 mm
and 10 degrees) and breathed (a smooth deformation of a few mm), and every node grew, shrank,
vanished or stayed by a known factor; new nodes appeared.

The follow-up is drawn, not warped from the baseline image: the body without nodes is carried
through the motion, then each surviving node is drawn again at its moved centre with its axes
scaled by its factor and turned with the patient, and the new nodes are placed in the fat left free.
The truth short axes are measured on the drawn masks as the engine measures its own, and the
response category follows from them (core/nodal_response.py). A scenario (complete or partial
response, stable, progression) picks the factors; a draw whose truth lies within RESPONSE_MARGIN of
a rule's threshold is drawn again, so the category is decided by the nodes, not by a millimetre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ..core.measurements import axial_diameters
from ..core import nodal_response as recist
from .case_generator import fits_in_fat, phantom_scene, place_nodes, scan_scene
from .features import NodeFeatures
from .node_placement import clear_border, features_largest_first
from .node_renderer import render_node
from .phantom_case import PhantomCase, PhantomNode
from .scene_grid import grid_centre_ras
from .tissue_scene import AIR, AIR_HU, FAT, TissueScene

SCENARIOS = (recist.COMPLETE_RESPONSE, recist.PARTIAL_RESPONSE, recist.STABLE_DISEASE, recist.PROGRESSIVE_DISEASE)
RESPONSE_MARGIN_PERCENT = 8.0  # the truth's sum change keeps this far from -30 % and +20 %
SIZE_MARGIN_MM = 1.5  # and its short axes this far from 10 mm where the category turns on them
ATTEMPTS = 12
MIN_VISIBLE_MM = 4.5  # a surviving node keeps at least this short axis; smaller, it is gone to the eye
INNER_MARGIN_MM = 8.0  # baseline nodes keep the largest motion plus this from the grid's faces


@dataclass
class NodeFate:
    """One node's known history between the two CTs."""

    node_id: str
    fate: str  # grown, shrunk, vanished, unchanged, new
    factor: float  # linear size factor (0 vanished, 1 unchanged; NaN new)
    baseline_centre_ras: tuple | None
    follow_up_centre_ras: tuple | None
    baseline_short_axis_mm: float
    follow_up_short_axis_mm: float  # 0 vanished


@dataclass
class FollowUpPair:
    """The two CTs with their truth. `follow_up.nodes` holds the surviving nodes (baseline ids) and
    the new ones (ids NEW_PREFIX1, ...), each with a seed; a follow-up run is given the new ones'."""

    baseline: PhantomCase
    follow_up: PhantomCase
    fates: list[NodeFate]
    motion: dict
    response: recist.NodalResponse
    scenario: str
    new_ids: list[str] = field(default_factory=list)
    decisive: bool = False  # the truth keeps clear of every threshold its category turns on

    def fate(self, node_id: str) -> NodeFate:
        return next(f for f in self.fates if f.node_id == node_id)


NEW_PREFIX = "new"


@dataclass(frozen=True)
class PatientMotion:
    """Follow-up RAS point y -> baseline RAS point: R (y - c) + c + t + breathing(y), breathing a smooth
    bump of `amplitude_mm` along `direction` around `bump_centre` (Gaussian, `bump_sigma_mm`)."""

    rotation: np.ndarray
    centre: np.ndarray
    translation: np.ndarray
    amplitude_mm: float
    direction: np.ndarray
    bump_centre: np.ndarray
    bump_sigma_mm: float

    def to_baseline(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=float).reshape(-1, 3)
        bump = np.exp(-np.sum((y - self.bump_centre) ** 2, axis=1) / (2.0 * self.bump_sigma_mm ** 2))
        return ((y - self.centre) @ self.rotation.T + self.centre + self.translation
                + self.amplitude_mm * bump[:, None] * self.direction)

    def to_follow_up(self, x: np.ndarray) -> np.ndarray:
        """The inverse, by fixed-point iteration (the breathing's gradient is far below 1)."""
        x = np.asarray(x, dtype=float).reshape(-1, 3)
        y = (x - self.centre - self.translation) @ self.rotation + self.centre
        for _ in range(30):
            y = y + (x - self.to_baseline(y)) @ self.rotation
        return y

    def record(self) -> dict:
        angle = float(np.degrees(Rotation.from_matrix(self.rotation).magnitude()))
        return {"rotation_deg": round(angle, 2), "translation_mm": [round(float(v), 2) for v in self.translation],
                "breathing_mm": round(self.amplitude_mm, 2)}


def random_motion(rng, centre, max_shift_mm: float = 20.0, max_angle_deg: float = 10.0,
                  breathing_mm=(2.0, 5.0)) -> PatientMotion:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.radians(rng.uniform(0.3, 1.0) * max_angle_deg)
    shift = rng.normal(size=3)
    shift *= rng.uniform(0.3, 1.0) * max_shift_mm / np.linalg.norm(shift)
    direction = np.array([0.0, rng.uniform(0.2, 0.5), 1.0])  # breathing: cranio-caudal, some A-P
    direction /= np.linalg.norm(direction)
    return PatientMotion(Rotation.from_rotvec(axis * angle).as_matrix(), np.asarray(centre, dtype=float), shift,
                         float(rng.uniform(*breathing_mm)), direction,
                         np.asarray(centre, dtype=float) + rng.uniform(-20.0, 20.0, 3), 45.0)


def generate_follow_up_pair(rng: np.random.Generator, n_nodes: int = 5, n_new: int = 1, scenario: str | None = None,
                            background=None, spacing=None, direction=None, field_of_view_mm=None,
                            max_shift_mm: float = 20.0, max_angle_deg: float = 10.0) -> FollowUpPair:
    """A baseline phantom case with `n_nodes` nodes (two of them target-sized) and its follow-up.

    scenario: the response to build (SCENARIOS); default random. background, spacing, direction and
    field_of_view_mm as for `generate_phantom_case` (both CTs share the grid; the patient moves in it).
    """
    scenario = scenario or SCENARIOS[int(rng.integers(len(SCENARIOS)))]
    scene, metadata = phantom_scene(rng, background, spacing, direction, True, field_of_view_mm)
    geometry = scene.geometry
    clean = TissueScene(scene.hu.copy(), scene.tissue.copy(), geometry,
                        None if scene.original is None else scene.original.copy())
    if background is not None and field_of_view_mm is not None:
        # the patient beyond the baseline's field of view moves into the follow-up's: the whole CT
        clean, _ = phantom_scene(rng, background, spacing, direction, True, None)
    free_fat = (scene.tissue == FAT) & _inner_region(geometry, max_shift_mm + INNER_MARGIN_MM)
    _, nodes0, renders0, _ = place_nodes(rng, scene.hu, geometry, free_fat, n_nodes, _baseline_features(rng, n_nodes))
    baseline_image, _ = scan_scene(rng, scene, renders0)
    label0 = np.zeros(geometry.shape_kji, dtype=np.int16)
    for node, render in zip(nodes0, renders0):
        label0[render.slices()][render.mask] = node.mask_value
    baseline = PhantomCase(baseline_image.astype(np.float32), geometry, label0, nodes0, dict(metadata))
    sa0 = {n.node_id: _short_axis(r, geometry) for n, r in zip(nodes0, renders0)}

    motion = random_motion(rng, grid_centre_ras(geometry), max_shift_mm, max_angle_deg)
    moved = _moved_scene(clean, motion, geometry)
    for _ in range(ATTEMPTS):
        pair = _follow_up(rng, baseline, moved, motion, sa0, scenario, n_new, metadata)
        pair.decisive = _decisive(pair)
        if pair.decisive:
            break
    return pair


def _inner_region(geometry, margin_mm: float) -> np.ndarray:
    """Voxels at least `margin_mm` (at most a third of the extent) from every face of the grid:
    where baseline nodes go, so the patient's motion does not carry them out of the follow-up."""
    inside = np.ones(geometry.shape_kji, dtype=bool)
    for axis, (n, spacing) in enumerate(zip(geometry.shape_kji, geometry.spacing[::-1])):
        margin = int(min(margin_mm / spacing, n / 3))
        index = [None, None, None]
        index[axis] = slice(None)
        position = np.arange(n)
        inside &= ((position >= margin) & (position < n - margin))[tuple(index)]
    return inside


def _baseline_features(rng, n_nodes: int) -> list[NodeFeatures]:
    """The spec's features, the two largest made target-sized (15-21 mm short axis, compact)."""
    features = features_largest_first(rng, n_nodes)
    for k in range(min(2, n_nodes)):
        features[k] = replace(features[k], short_axis_mm=float(rng.uniform(16.0, 21.0)),
                              axis_ratio=float(min(features[k].axis_ratio, 1.5)))
    for k in range(2, n_nodes):  # the others stay below the target size
        features[k] = replace(features[k], short_axis_mm=float(min(features[k].short_axis_mm, 12.0)),
                              axis_ratio=float(min(features[k].axis_ratio, 2.0)))
    return features


def _short_axis(render, geometry) -> float:
    return float(axial_diameters(render.mask, geometry, render.start_kji).short_axis_mm)


def _moved_scene(scene: TissueScene, motion: PatientMotion, geometry) -> TissueScene:
    """The body without nodes (`scene`, on its own grid) as the follow-up sees it on `geometry`,
    the baseline's grid: the patient moved in it."""
    shape = geometry.shape_kji
    ijk = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape[::-1]), indexing="ij"), -1)
    ijk = ijk.reshape(-1, 3)  # (i, j, k) in i-major order
    x = motion.to_baseline(geometry.ijk_to_ras_points(ijk))
    kji = scene.geometry.ras_to_ijk_points(x)[:, ::-1].T
    out_shape = tuple(shape[::-1])

    def sample(volume, order, fill):
        values = ndimage.map_coordinates(volume, kji, order=order, cval=fill, prefilter=False)
        return np.ascontiguousarray(values.reshape(out_shape).transpose(2, 1, 0)).astype(volume.dtype)

    original = None if scene.original is None else sample(scene.original, 1, AIR_HU)
    return TissueScene(sample(scene.hu, 1, AIR_HU), sample(scene.tissue, 0, AIR), geometry, original)


def _factors(rng, scenario: str, sa0: dict[str, float]) -> dict[str, float]:
    """A size factor per baseline node for the scenario (0: vanished)."""
    targets = recist.target_nodes(sa0)
    others = [k for k in sa0 if k not in targets]
    factors = {}
    if scenario == recist.COMPLETE_RESPONSE:
        for k in targets + others:  # below 8 mm, still visible, or gone
            low = max(0.5, MIN_VISIBLE_MM / sa0[k])
            factors[k] = 0.0 if rng.random() < 0.3 or low > 8.0 / sa0[k] else float(rng.uniform(low, 8.0 / sa0[k]))
    elif scenario == recist.PARTIAL_RESPONSE:
        for k in targets:
            factors[k] = float(rng.uniform(0.45, 0.6))
        if targets:  # one stays >= 10 mm, else it would be a complete response
            factors[targets[0]] = max(factors[targets[0]], 12.0 / sa0[targets[0]])
    elif scenario == recist.PROGRESSIVE_DISEASE:
        for k in targets:
            factors[k] = float(rng.uniform(1.3, 1.5))
    else:
        for k in targets:
            factors[k] = float(rng.uniform(0.92, 1.08))
    vanished_done = any(v == 0.0 for v in factors.values())
    for k in others:
        if k in factors:
            continue
        if not vanished_done:
            factors[k], vanished_done = 0.0, True
        elif sa0[k] >= recist.PATHOLOGICAL_MM:  # non-target: kept, it does not move the sum
            factors[k] = 1.0
        else:  # shrunk only where it stays visible
            factors[k] = float(rng.choice([1.0, 0.7, 1.3] if 0.7 * sa0[k] >= MIN_VISIBLE_MM else [1.0, 1.3]))
    return factors


def _follow_up(rng, baseline: PhantomCase, moved: TissueScene, motion: PatientMotion, sa0, scenario, n_new,
               metadata) -> FollowUpPair:
    geometry = moved.geometry
    scene = TissueScene(moved.hu.copy(), moved.tissue, geometry, moved.original)
    free_fat = moved.tissue == FAT
    clear_border(free_fat)
    factors = _factors(rng, scenario, sa0)
    label = np.zeros(geometry.shape_kji, dtype=np.int16)
    nodes, renders, fates = [], [], []
    for node in baseline.nodes:
        factor = factors[node.node_id]
        centre1 = motion.to_follow_up(node.centre_ras)[0]
        if factor == 0.0:
            fates.append(NodeFate(node.node_id, "vanished", 0.0, node.centre_ras, None, sa0[node.node_id], 0.0))
            continue
        appearance = replace(node.appearance, semi_axes_mm=node.appearance.semi_axes_mm * factor,
                             rotation=motion.rotation.T @ node.appearance.rotation)
        while factor > 1.0 and not fits_in_fat(geometry, free_fat, centre1, appearance):  # no room to grow so far
            factor = max(1.0, factor - 0.05)
            appearance = replace(appearance, semi_axes_mm=node.appearance.semi_axes_mm * factor)
        render = render_node(scene.hu, geometry, centre1, appearance, spill_allowed=free_fat)
        free_fat[render.slices()][render.mask] = False
        label[render.slices()][render.mask] = node.mask_value
        seed = geometry.ijk_to_ras_points(np.round(geometry.ras_to_ijk_points(centre1)))[0]
        nodes.append(replace(node, centre_ras=tuple(float(v) for v in centre1), seed_ras=tuple(float(v) for v in seed),
                             appearance=appearance))
        renders.append(render)
        fate = "unchanged" if abs(factor - 1.0) < 1e-9 else ("grown" if factor > 1.0 else "shrunk")
        fates.append(NodeFate(node.node_id, fate, factor, node.centre_ras, tuple(float(v) for v in centre1),
                              sa0[node.node_id], _short_axis(render, geometry)))
    new_ids = []
    if n_new:
        new_features = features_largest_first(rng, n_new)
        if scenario == recist.PROGRESSIVE_DISEASE:  # growth is limited by the fat around: a new lesion too
            new_features[0] = replace(new_features[0], short_axis_mm=float(rng.uniform(13.0, 16.0)),
                                      axis_ratio=float(min(new_features[0].axis_ratio, 1.5)))
        else:  # small new nodes: not pathological, they do not decide the category
            new_features = [replace(f, short_axis_mm=float(min(f.short_axis_mm, 7.0))) for f in new_features]
        _, placed, new_renders, _ = place_nodes(rng, scene.hu, geometry, free_fat, n_new, new_features)
        values = 1 + max([n.mask_value for n in baseline.nodes], default=0)
        for n, (node, render) in enumerate(zip(placed, new_renders)):
            node_id = f"{NEW_PREFIX}{n + 1}"
            node = replace(node, node_id=node_id, mask_value=values + n)
            label[render.slices()][render.mask] = node.mask_value
            nodes.append(node)
            renders.append(render)
            new_ids.append(node_id)
            fates.append(NodeFate(node_id, "new", math.nan, None, node.centre_ras, math.nan,
                                  _short_axis(render, geometry)))
    image, _ = scan_scene(rng, scene, renders)
    follow_up = PhantomCase(image.astype(np.float32), geometry, label, nodes, dict(metadata))
    after = {f.node_id: f.follow_up_short_axis_mm for f in fates if f.fate != "new"}
    new = {f.node_id: f.follow_up_short_axis_mm for f in fates if f.fate == "new"}
    response = recist.nodal_response(sa0, after, new)
    return FollowUpPair(baseline, follow_up, fates, motion.record(), response, scenario, new_ids)


def _decisive(pair: FollowUpPair) -> bool:
    """Whether the truth's category keeps clear of every threshold it could turn on."""
    r = pair.response
    if math.isfinite(r.change_percent) and not r.new_pathological:  # a new lesion decides alone
        for threshold in (-100.0 * recist.PARTIAL_RESPONSE_FALL, 100.0 * recist.PROGRESSION_RISE):
            if abs(r.change_percent - threshold) < RESPONSE_MARGIN_PERCENT:
                return False
    # where the target list, complete response and new lesions turn
    near = [f for f in pair.fates if f.fate != "new" and abs(f.baseline_short_axis_mm - recist.TARGET_MM) < SIZE_MARGIN_MM]
    complete_possible = r.category in (recist.COMPLETE_RESPONSE, recist.PARTIAL_RESPONSE)
    near += [f for f in pair.fates if f.fate != "vanished" and abs(f.follow_up_short_axis_mm - recist.PATHOLOGICAL_MM) < SIZE_MARGIN_MM
             and (f.fate == "new" or (complete_possible and f.baseline_short_axis_mm >= recist.PATHOLOGICAL_MM))]
    return not near and r.category == pair.scenario
