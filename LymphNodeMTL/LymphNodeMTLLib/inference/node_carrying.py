"""Carry baseline nodes into a follow-up CT: where each went, its mask there, or `not_found`.

For each baseline node with a mask:
1. its neighbourhood (the node and LOCAL_MARGIN_MM around it) is registered again, locally, by a
   translation on top of the whole-CT registration (ct_registration.py): the global transform is
   a few mm off where the body bent, the node's surroundings are not;
2. the deepest point of its baseline mask (a seed surely inside the node) is mapped into the
   follow-up and given to the engine as the node's seed;
3. the mask found there is checked against the baseline, in the baseline's frame: a mask lying
   partly (MAX_FOREIGN_FRACTION) where the baseline had other soft tissue (a vessel, bowel,
   another node) is something else, and a mask that does not reach the baseline node's core (its
   deepest point, towards which a node shrinks) is not this node. Then the node is
   `not_found`, with no mask: a vanished node never gets a mask on something else.
The local correction is kept only where it raises the neighbourhood's correlation and stays
within MAX_LOCAL_SHIFT_MM. A node whose neighbourhood matches poorly even so (correlation below
MIN_LOCAL_CORRELATION) keeps its mask but is `registration_uncertain`: the reader decides whether it is the same node. A node
mapped outside the follow-up CT is `registration_uncertain` with no mask, and so is every node when
the two CTs as a whole correlate below MIN_GLOBAL_CORRELATION once registered (another patient's CT,
another body region): then no node is said found or gone for sure.

The baseline's seed and long axis, mapped, are where the node was: the seed is the prompt; the
long axis is not, since a line fixes the node's extent and a grown node would be cut to its
baseline size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..core import node_status
from ..core.case import Case, Seed
from ..core.geometry import VolumeGeometry, lps_to_ras_points
from ..core.node_result import NodeResult
from .ct_registration import HU_RANGE, CtRegistration

LOCAL_MARGIN_MM = 15.0
MAX_LOCAL_SHIFT_MM = 8.0  # a local correction beyond this went astray: the global transform stands
MIN_GAIN = 0.01  # of correlation, for the local correction to replace the global transform
MIN_LOCAL_CORRELATION = 0.5
MIN_GLOBAL_CORRELATION = 0.9  # the two CTs, registered: a follow-up of the same body reaches 0.99
LOCAL_SAMPLING, LOCAL_SAMPLING_SEED = 0.2, 20240611  # a fixed sample of the patch: seconds, repeatable
BASELINE_DILATION_MM = 2.5  # the baseline node grown by the registration's residual error
SOFT_TISSUE_HU = -30.0  # above: not fat; where the baseline had this outside the node, something else was
MAX_FOREIGN_FRACTION = 0.2  # of the follow-up mask lying on baseline non-fat outside the node
CORE_RADIUS_MM = 3.0  # the follow-up mask must reach this close to the baseline node's deepest point


@dataclass
class CarriedNode:
    """One baseline node at follow-up: where it went and how sure the carrying is."""

    node_id: str
    seed_ras: tuple | None  # the mapped seed, None when mapped outside the follow-up CT
    centre_ras: tuple | None  # the baseline centre, mapped
    local_shift_mm: float = float("nan")
    local_correlation: float = float("nan")
    status: str = node_status.OK  # before segmentation: ok, or registration_uncertain
    checks: dict = field(default_factory=dict)


def carry_nodes(baseline: Case, baseline_nodes: list[NodeResult], follow_up: Case, registration: CtRegistration,
                baseline_image: sitk.Image, follow_up_image: sitk.Image) -> list[CarriedNode]:
    """Where each baseline node went (steps 1-2 of the module doc); baseline_image, follow_up_image:
    the two CTs as the registration read them (ct_registration.sitk_image)."""
    baseline_image, follow_up_image = _clamped(baseline_image), _clamped(follow_up_image)
    carried = []
    # CTs that do not match as a whole (another patient's, another region): no node is placed surely
    mismatch = not registration.correlation >= MIN_GLOBAL_CORRELATION
    for node in baseline_nodes:
        if node.is_empty:  # no mask to match: its seed alone, mapped globally
            seed = registration.map_ras(node.seed_ras)[0]
            carried.append(_placed(node.node_id, seed, seed, follow_up.geometry, float("nan"), float("nan")))
            continue
        shift_lps, correlation, transform = _local_translation(baseline_image, follow_up_image, baseline.geometry,
                                                               node, registration.transform)
        inner = _deepest_point(node, baseline.geometry)
        centre = baseline.geometry.ijk_to_ras_points(
            (np.argwhere(node.mask).mean(axis=0) + node.bbox_start_kji)[::-1])[0]
        seed, mapped_centre = _map(transform, inner), _map(transform, centre)
        item = _placed(node.node_id, seed, mapped_centre, follow_up.geometry, float(np.linalg.norm(shift_lps)),
                       correlation)
        item.checks["transform"] = transform
        carried.append(item)
    if mismatch:
        for item in carried:
            item.status = node_status.REGISTRATION_UNCERTAIN
            item.checks["registration"] = f"the CTs correlate {registration.correlation:.2f} registered"
    return carried


def _placed(node_id, seed, centre, geometry: VolumeGeometry, shift, correlation) -> CarriedNode:
    inside = bool(geometry.contains_ras(np.asarray(seed).reshape(1, 3))[0])
    item = CarriedNode(node_id, tuple(float(v) for v in seed) if inside else None, tuple(float(v) for v in centre),
                       shift, correlation)
    if not inside or correlation < MIN_LOCAL_CORRELATION:
        item.status = node_status.REGISTRATION_UNCERTAIN
    return item


def check_found(carried: CarriedNode, result: NodeResult, baseline: Case, node: NodeResult,
                follow_up: Case) -> str:
    """Step 3: the follow-up status of a carried node given the engine's result at its seed. A mask
    that fails the checks is dropped (`checks["drop_mask"]`): the node is not_found, or, where the
    registration is uncertain, registration_uncertain (not found there, but maybe not where it went)."""
    missing = node_status.REGISTRATION_UNCERTAIN if carried.status == node_status.REGISTRATION_UNCERTAIN \
        else node_status.NOT_FOUND
    if not node_status.has_usable_mask(result.status) or result.is_empty:
        carried.checks.update(reason=f"engine: {result.status}", drop_mask=True)
        return missing
    if node.is_empty or "transform" not in carried.checks:
        return carried.status if node_status.needs_review(carried.status) else result.status
    foreign, core_reached = _against_baseline(carried.checks["transform"], result, baseline, node, follow_up.geometry)
    carried.checks.update(foreign_fraction=round(foreign, 3), reaches_baseline_core=core_reached)
    if foreign > MAX_FOREIGN_FRACTION or not core_reached:
        carried.checks.update(reason=("mask on other tissue of the baseline" if foreign > MAX_FOREIGN_FRACTION
                                      else "mask away from the baseline node"), drop_mask=True)
        return missing
    if carried.status == node_status.REGISTRATION_UNCERTAIN:
        return node_status.REGISTRATION_UNCERTAIN
    return result.status


def follow_up_seeds(carried: list[CarriedNode]) -> list[Seed]:
    """The engine's seeds for the carried nodes that landed inside the follow-up CT."""
    return [Seed(c.node_id, c.seed_ras) for c in carried if c.seed_ras is not None]


# --- local registration ----------------------------------------------------------------------
def _clamped(image: sitk.Image) -> sitk.Image:
    return sitk.Clamp(image, sitk.sitkFloat32, *HU_RANGE)


def _patch_box(node: NodeResult, geometry: VolumeGeometry, margin_mm: float):
    margin = np.ceil(margin_mm / geometry.spacing[::-1]).astype(int)
    start = np.maximum(np.asarray(node.bbox_start_kji) - margin, 0)
    stop = np.minimum(np.asarray(node.bbox_stop_kji) + margin, geometry.shape_kji)
    return start, stop


def _local_translation(baseline_image: sitk.Image, follow_up_image: sitk.Image, geometry: VolumeGeometry,
                       node: NodeResult, global_transform: sitk.Transform):
    """(shift in LPS mm, normalised correlation after, baseline -> follow-up transform with the shift)."""
    start, stop = _patch_box(node, geometry, LOCAL_MARGIN_MM)
    fixed = sitk.RegionOfInterest(baseline_image, [int(v) for v in (stop - start)[::-1]],
                                  [int(v) for v in start[::-1]])
    # the follow-up brought into the baseline's frame around the patch, wide enough for any shift
    wide_start, wide_stop = _patch_box(node, geometry, LOCAL_MARGIN_MM + MAX_LOCAL_SHIFT_MM)
    reference = sitk.RegionOfInterest(baseline_image, [int(v) for v in (wide_stop - wide_start)[::-1]],
                                      [int(v) for v in wide_start[::-1]])
    moving = sitk.Resample(follow_up_image, reference, global_transform, sitk.sitkLinear, -1000.0)
    translation = sitk.TranslationTransform(3)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsCorrelation()
    method.SetMetricSamplingStrategy(method.REGULAR)
    method.SetMetricSamplingPercentage(LOCAL_SAMPLING, LOCAL_SAMPLING_SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=0.02, numberOfIterations=80,
                                                    relaxationFactor=0.6)
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1.5, 0.5])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(translation, inPlace=True)
    at_zero = -float(method.MetricEvaluate(fixed, moving))
    method.Execute(fixed, moving)
    correlation = -float(method.MetricEvaluate(fixed, moving))
    shift = np.asarray(translation.GetOffset(), dtype=float)
    if correlation < at_zero + MIN_GAIN or np.linalg.norm(shift) > MAX_LOCAL_SHIFT_MM:
        # the optimiser wandered off (thick slices, little texture): the global transform stands
        translation.SetOffset((0.0, 0.0, 0.0))
        correlation, shift = at_zero, np.zeros(3)
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(global_transform)
    composite.AddTransform(translation)  # applied first: the baseline point is shifted, then mapped
    return shift, correlation, composite


def _map(transform: sitk.Transform, ras) -> np.ndarray:
    lps = lps_to_ras_points(np.asarray(ras, dtype=float).reshape(1, 3))[0]
    return lps_to_ras_points(np.asarray(transform.TransformPoint(tuple(float(v) for v in lps))).reshape(1, 3))[0]


def _deepest_point(node: NodeResult, geometry: VolumeGeometry) -> np.ndarray:
    """The RAS point of the baseline mask farthest from its edge (ties: nearest the centroid)."""
    padded = np.pad(node.mask, 1)
    depth = ndimage.distance_transform_edt(padded, sampling=geometry.spacing[::-1])[1:-1, 1:-1, 1:-1]
    deepest = np.argwhere(depth >= depth.max() - 1e-6)
    centroid = np.argwhere(node.mask).mean(axis=0)
    best = deepest[np.argmin(np.linalg.norm((deepest - centroid) * geometry.spacing[::-1], axis=1))]
    return geometry.ijk_to_ras_points((best + node.bbox_start_kji)[::-1].astype(float))[0]


# --- the found mask against the baseline -----------------------------------------------------
def _against_baseline(transform, result: NodeResult, baseline: Case, node: NodeResult,
                      follow_up_geometry: VolumeGeometry) -> tuple[float, bool]:
    """(share of the follow-up mask on baseline non-fat outside the grown baseline node, whether it
    reaches the baseline node itself), with the mask brought into the baseline's frame."""
    geometry = baseline.geometry
    start, stop = _patch_box(node, geometry, LOCAL_MARGIN_MM)
    patch = geometry.crop(tuple(start), tuple(stop))
    mapped = _mapped_by_field(transform, patch)
    follow_ijk = np.round(follow_up_geometry.ras_to_ijk_points(lps_to_ras_points(mapped))).astype(int)
    kji = follow_ijk[:, ::-1] - np.asarray(result.bbox_start_kji)
    inside = np.all((kji >= 0) & (kji < result.mask.shape), axis=1)
    in_mask = np.zeros(len(kji), dtype=bool)
    in_mask[inside] = result.mask[tuple(kji[inside].T)]
    in_mask = in_mask.reshape(tuple(patch.shape_kji[::-1])).transpose(2, 1, 0)  # back to (k, j, i)
    if not in_mask.any():
        return 1.0, False
    own = np.zeros(patch.shape_kji, dtype=bool)
    offset = np.asarray(node.bbox_start_kji) - start
    own[tuple(slice(a, a + n) for a, n in zip(offset, node.mask.shape))] = node.mask
    grown = ndimage.distance_transform_edt(~own, sampling=geometry.spacing[::-1]) <= BASELINE_DILATION_MM
    hu = ndimage.gaussian_filter(baseline.image[tuple(slice(a, b) for a, b in zip(start, stop))].astype(np.float32),
                                 0.7 / geometry.spacing[::-1])
    foreign = in_mask & ~grown & (hu > SOFT_TISSUE_HU)
    # the node's core: within CORE_RADIUS_MM of its deepest point (a node shrinks towards it)
    core_kji = np.round(patch.ras_to_ijk_points(_deepest_point(node, geometry))[0][::-1]).astype(int)
    near_core = np.zeros(patch.shape_kji, dtype=bool)
    near_core[tuple(np.clip(core_kji, 0, np.asarray(patch.shape_kji) - 1))] = True
    near_core = ndimage.distance_transform_edt(~near_core, sampling=geometry.spacing[::-1]) <= CORE_RADIUS_MM
    return float(foreign.sum() / in_mask.sum()), bool((in_mask & near_core & own).any())


def _mapped_by_field(transform: sitk.Transform, patch: VolumeGeometry) -> np.ndarray:
    """Every patch voxel's LPS point mapped by `transform`, in i-major order (as the caller's)."""
    reference = sitk.Image([int(n) for n in patch.shape_kji[::-1]], sitk.sitkFloat32)
    patch.apply_to_sitk(reference)
    to_field = sitk.TransformToDisplacementFieldFilter()
    to_field.SetReferenceImage(reference)
    to_field.SetOutputPixelType(sitk.sitkVectorFloat64)
    displacement = sitk.GetArrayFromImage(to_field.Execute(transform))  # (k, j, i, 3) in LPS
    ijk = np.stack(np.meshgrid(*(np.arange(n, dtype=float) for n in patch.shape_kji[::-1]), indexing="ij"), -1)
    points = lps_to_ras_points(patch.ijk_to_ras_points(ijk.reshape(-1, 3)))
    return points + displacement.transpose(2, 1, 0, 3).reshape(-1, 3)
