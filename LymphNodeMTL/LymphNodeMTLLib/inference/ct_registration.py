"""Register a follow-up CT to its baseline CT (SimpleITK): rigid, then affine, then a coarse B-spline
where it helps, each stage's metric recorded.

The result maps baseline points to follow-up points (fixed = baseline, moving = follow-up), which
is what carrying a baseline node into the follow-up needs. Both CTs are read at a coarse isotropic
spacing (REGISTRATION_SPACING_MM, coarser for a large CT) on LPS-aligned grids, with HU clipped to [-1000, 400], so
bone and contrast do not dominate and the three stages take seconds on two CPU cores. A stage is
kept only when it lowers the metric of the stage before (Mattes mutual information, lower is
better); the metric is a fixed random sample, so a rerun gives the same transform.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from ..core.geometry import VolumeGeometry, lps_to_ras_points

REGISTRATION_SPACING_MM = 3.0
MAX_VOXELS = 400_000  # per CT at the registration spacing: keeps every stage to seconds
HU_RANGE = (-1000.0, 400.0)
SAMPLING_SEED = 20240611
BSPLINE_MESH_MM = 80.0  # control point spacing of the coarse B-spline: breathing, not anatomy
# fixed-first: these images' largest motion (20 mm, 10 degrees) is caught by the coarsest level
SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_MM = (4.0, 2.0, 0.0)


@dataclass
class CtRegistration:
    """Baseline -> follow-up transform (LPS, SimpleITK's convention) and how each stage went."""

    transform: sitk.Transform
    stages: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    correlation: float = float("nan")  # of the two CTs, registered: low for another patient's CT

    def map_ras(self, points_ras) -> np.ndarray:
        """Baseline RAS points (N, 3) -> follow-up RAS points."""
        points = np.asarray(points_ras, dtype=float).reshape(-1, 3)
        lps = lps_to_ras_points(points)  # the flip is its own inverse
        mapped = np.array([self.transform.TransformPoint(tuple(float(v) for v in p)) for p in lps])
        return lps_to_ras_points(mapped.reshape(-1, 3))

    def record(self) -> dict:
        """What run.json keeps of it."""
        return {"stages": self.stages, "seconds": round(self.seconds, 3),
                "kept": [s["name"] for s in self.stages if s["kept"]], "correlation": round(self.correlation, 4)}


def sitk_image(image: np.ndarray, geometry: VolumeGeometry) -> sitk.Image:
    out = sitk.GetImageFromArray(np.ascontiguousarray(image, dtype=np.float32))
    geometry.apply_to_sitk(out)
    return out


def register_follow_up(baseline: sitk.Image, follow_up: sitk.Image, deformable: bool = True) -> CtRegistration:
    """Rigid, affine and (with `deformable`) coarse B-spline registration of `follow_up` to `baseline`."""
    t0 = time.perf_counter()
    (fixed, fixed_mask), (moving, moving_mask) = _prepared(baseline), _prepared(follow_up)
    masks = (fixed_mask, moving_mask)
    stages: list[dict] = []
    identity_metric = _metric(fixed, moving, sitk.Euler3DTransform(), masks)
    rigid = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                              sitk.CenteredTransformInitializerFilter.GEOMETRY)
    rigid = _run_stage(fixed, moving, rigid, "rigid", stages, identity_metric, None, masks)
    best, best_metric = rigid, stages[-1]["metric"]
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    affine = _run_stage(fixed, moving, affine, "affine", stages, best_metric, None, masks)
    if stages[-1]["kept"]:
        best, best_metric = affine, stages[-1]["metric"]
    if deformable:
        mesh = [max(1, int(round(n * s / BSPLINE_MESH_MM))) for n, s in zip(fixed.GetSize(), fixed.GetSpacing())]
        bspline = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
        bspline = _run_stage(fixed, moving, bspline, "bspline", stages, best_metric, best, masks)
        if stages[-1]["kept"]:
            composite = sitk.CompositeTransform(3)
            composite.AddTransform(best)
            composite.AddTransform(bspline)  # applied first: baseline -> deformed -> affine
            best = composite
    correlation = _correlation(fixed, moving, best, masks)
    return CtRegistration(best, stages, time.perf_counter() - t0, correlation)


def _prepared(image: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
    """The CT at the registration spacing (smoothed before resampling), HU clipped, on an LPS-aligned
    grid over its physical extent: the same CT stored flipped, permuted or as DICOM slices gives the
    same grid and so the same registration. With it, the mask of that grid's voxels the CT covers."""
    size = np.asarray(image.GetSize())
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(float(c) for c in corner))
                        for corner in np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in size], indexing="ij")).reshape(3, -1).T])
    low, high = corners.min(axis=0), corners.max(axis=0)
    step = max(REGISTRATION_SPACING_MM, float(np.cbrt(np.prod(high - low) / MAX_VOXELS)))
    new_size = [max(4, int(np.ceil((h - lo) / step))) for lo, h in zip(low, high)]
    smoothed = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), step / 2.0)
    origin = tuple(float(v) for v in low + step / 2.0)
    resampled = sitk.Resample(smoothed, new_size, sitk.Transform(), sitk.sitkLinear, origin, (step,) * 3,
                              tuple(np.eye(3).flatten()), HU_RANGE[0], sitk.sitkFloat32)
    # where the CT has data: the corners of an oblique or shifted grid are not the patient's air
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    covered = sitk.Resample(ones, new_size, sitk.Transform(), sitk.sitkNearestNeighbor, origin, (step,) * 3,
                            tuple(np.eye(3).flatten()), 0, sitk.sitkUInt8)
    return sitk.Clamp(resampled, sitk.sitkFloat32, *HU_RANGE), sitk.BinaryErode(covered, [1, 1, 1])


def _method(fixed: sitk.Image, moving_initial=None, masks=None) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    if masks is not None:  # only where both CTs have data
        method.SetMetricFixedMask(masks[0])
        method.SetMetricMovingMask(masks[1])
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.REGULAR)
    method.SetMetricSamplingPercentage(0.25, SAMPLING_SEED)
    method.SetInterpolator(sitk.sitkLinear)
    if moving_initial is not None:
        method.SetMovingInitialTransform(moving_initial)
    return method


def _correlation(fixed, moving, transform, masks) -> float:
    """Normalised correlation of the two CTs where both have data, the follow-up registered."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsCorrelation()
    method.SetMetricFixedMask(masks[0])
    method.SetMetricMovingMask(masks[1])
    method.SetInterpolator(sitk.sitkLinear)
    method.SetMovingInitialTransform(transform)
    method.SetInitialTransform(sitk.TranslationTransform(3))
    return -float(method.MetricEvaluate(fixed, moving))


def _metric(fixed, moving, transform, masks, moving_initial=None) -> float:
    method = _method(fixed, moving_initial, masks)
    method.SetInitialTransform(transform)
    return float(method.MetricEvaluate(fixed, moving))


def _run_stage(fixed, moving, transform, name: str, stages: list, previous_metric: float, moving_initial, masks):
    t0 = time.perf_counter()
    method = _method(fixed, moving_initial, masks)
    if name == "bspline":
        method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=20,
                                    maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=40)
        method.SetShrinkFactorsPerLevel([2])  # breathing is smooth: the coarse level sees it
        method.SetSmoothingSigmasPerLevel([2.0])
    else:
        method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=0.01, numberOfIterations=120,
                                                        relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
        method.SetOptimizerScalesFromPhysicalShift()
        levels = (list(SHRINK_FACTORS), list(SMOOTHING_MM)) if name == "rigid" else ([2, 1], [2.0, 0.0])
        method.SetShrinkFactorsPerLevel(levels[0])
        method.SetSmoothingSigmasPerLevel(levels[1])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed, moving)
    metric = _metric(fixed, moving, transform, masks, moving_initial)
    kept = name == "rigid" or metric < previous_metric
    stages.append({"name": name, "metric_before": round(previous_metric, 5), "metric": round(metric, 5),
                   "iterations": int(method.GetOptimizerIteration()), "kept": bool(kept),
                   "seconds": round(time.perf_counter() - t0, 3)})
    return transform
