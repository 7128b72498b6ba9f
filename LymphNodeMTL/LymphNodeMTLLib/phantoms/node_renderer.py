"""Draw one phantom lymph node into a CT volume (phantom spec v1, "Appearance").

A node is an implicit shape in its own frame (local x, y, z = short, middle, long semi-axis):
a point is inside when its ellipsoidal radius rho is below 1 + 0.25*m*noise(direction). The shape is
evaluated only inside the node's bounding box, at voxel centres mapped through the volume's exact
ijk->RAS matrix, so any direction matrix (oblique, flipped, permuted) gives the right node in
patient space. The truth mask is the centre sample; on thick slices the HU is averaged over
sub-samples along the thick axis (partial-volume effect), as a scanner would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.geometry import VolumeGeometry
from .features import NodeFeatures

# Axes coarser than this (mm) are supersampled for the HU; the sub-sample pitch is at most this.
THICK_AXIS_MM = 1.2
SUBSAMPLE_PITCH_MM = 0.6
# The hilum wedge reaches from the surface to this relative radius (a quarter of the radius deep,
# per the spec) and opens to this half-angle around the node's long axis.
HILUM_INNER_RADIUS = 0.75
HILUM_HALF_ANGLE_RAD = np.deg2rad(30.0)


@dataclass(frozen=True, eq=False)  # holds arrays: compare by identity
class SmoothField:
    """A smooth random function of position: a weighted sum of cosine waves, bounded by [-1, 1].

    Attributes:
        frequencies: (W, 3) wave vectors in radians per unit of the input coordinates.
        phases: (W,) phases in radians.
        weights: (W,) weights whose absolute values sum to 1, which bounds the field by 1.
    """

    frequencies: np.ndarray
    phases: np.ndarray
    weights: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, n_waves: int, wavelengths: tuple[float, float]):
        """Waves in random directions with wavelengths uniform in `wavelengths` (input units)."""
        directions = _random_unit_vectors(rng, n_waves)
        wavelength = rng.uniform(*wavelengths, n_waves)
        weights = rng.uniform(0.2, 1.0, n_waves)
        return cls(
            frequencies=directions * (2.0 * np.pi / wavelength)[:, None],
            phases=rng.uniform(0.0, 2.0 * np.pi, n_waves),
            weights=weights / weights.sum(),
        )

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Field values at `points` (..., 3); returns shape (...)."""
        return np.cos(points @ self.frequencies.T + self.phases) @ self.weights


@dataclass(frozen=True, eq=False)  # holds arrays: compare by identity
class NodeAppearance:
    """Everything needed to draw one node; drawn once per node from its features.

    Attributes:
        semi_axes_mm: (3,) short, middle and long semi-axes (local x, y, z).
        rotation: 3x3 matrix whose columns are the local x, y, z axes in RAS.
        margin_amplitude: relative amplitude of the surface perturbation, 0.25*m.
        margin_field: smooth function of the unit direction that perturbs the surface radius.
        solid_hu: mean attenuation of the node's solid tissue.
        texture_amplitude_hu: swing of the multiplicative texture on the solid tissue, 20*h.
        texture_field: smooth function of the local position (mm) that modulates the HU.
        necrosis_fraction: relative radius of the necrotic core (0 = none).
        necrosis_hu: attenuation of the necrotic core.
        hilum_direction: local unit vector where the fatty hilum opens, None without hilum.
        hilum_hu: attenuation of the fatty hilum.
    """

    semi_axes_mm: np.ndarray
    rotation: np.ndarray
    margin_amplitude: float
    margin_field: SmoothField
    solid_hu: float
    texture_amplitude_hu: float
    texture_field: SmoothField
    necrosis_fraction: float
    necrosis_hu: float
    hilum_direction: np.ndarray | None
    hilum_hu: float

    @property
    def min_radius_mm(self) -> float:
        """Radius of the largest ball around the centre that is surely inside the node."""
        return float(self.semi_axes_mm.min() * (1.0 - self.margin_amplitude))


@dataclass
class NodeRender:
    """A node's voxels in the volume grid: half-open box [start, stop) along k, j, i.

    Attributes:
        start_kji, stop_kji: the box.
        mask: bool, the truth mask (voxel centres inside the node), before any blur.
        coverage: float32, the fraction of each voxel written with node HU (partial volume);
            zero where nothing was written. Equals `mask` on thin-slice grids.
    """

    start_kji: tuple[int, int, int]
    stop_kji: tuple[int, int, int]
    mask: np.ndarray
    coverage: np.ndarray

    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start_kji, self.stop_kji))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random proper rotation (QR of a Gaussian matrix with the sign fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1.0
    return q


def sample_node_appearance(rng: np.random.Generator, features: NodeFeatures) -> NodeAppearance:
    """Draw a node's geometry and attenuations for the given latent features (spec v1)."""
    short = features.short_axis_mm / 2.0
    long = features.axis_ratio * short
    hilum = None
    if features.fatty_hilum:
        # The hilum faces sideways, perpendicular to the long axis, as in a bean-shaped node.
        angle = rng.uniform(0.0, 2.0 * np.pi)
        hilum = np.array([np.cos(angle), np.sin(angle), 0.0])
    return NodeAppearance(
        semi_axes_mm=np.array([short, rng.uniform(short, long), long]),
        rotation=random_rotation(rng),
        margin_amplitude=0.25 * features.margin_irregularity,
        margin_field=SmoothField.random(rng, 6, (1.5, 4.0)),
        solid_hu=_clipped_normal(rng, 45.0, 10.0),
        texture_amplitude_hu=20.0 * features.heterogeneity,
        texture_field=SmoothField.random(rng, 6, (3.0, 10.0)),
        necrosis_fraction=features.necrosis_fraction,
        necrosis_hu=_clipped_normal(rng, 15.0, 5.0),
        hilum_direction=hilum,
        hilum_hu=_clipped_normal(rng, -60.0, 20.0),
    )


def relative_radius(appearance: NodeAppearance, local_mm: np.ndarray):
    """(relative radius, unit direction) of points in the node frame (..., 3) mm.

    The relative radius is 1 on the perturbed surface, below 1 inside; the necrotic core and the
    hilum are defined on it, so they follow the margin.
    """
    a = appearance
    distance = np.linalg.norm(local_mm, axis=-1)
    direction = local_mm / np.maximum(distance, 1e-9)[..., None]
    rho = np.linalg.norm(local_mm / a.semi_axes_mm, axis=-1)
    return rho / (1.0 + a.margin_amplitude * a.margin_field(direction)), direction


def evaluate_node(appearance: NodeAppearance, local_mm: np.ndarray):
    """Inside test and HU at points given in the node frame (..., 3) mm.

    Returns (inside bool, hu float32), both shaped like `local_mm` without its last axis.
    """
    a = appearance
    relative, direction = relative_radius(a, local_mm)
    hu = np.full(relative.shape, a.solid_hu, dtype=np.float32)
    hu[relative <= a.necrosis_fraction] = a.necrosis_hu
    if a.hilum_direction is not None:
        # A wedge, as the cleft of a bean-shaped node: the sector within the half-angle of the
        # hilum direction around the long (local z) axis, from the inner radius out to the
        # surface. A cone narrowing to a point would hold ~1.5 % of the node, too little to see
        # at CT resolution; this wedge holds ~10 %.
        across = local_mm[..., :2]
        across_norm = np.maximum(np.linalg.norm(across, axis=-1), 1e-9)
        cos_angle = (across @ a.hilum_direction[:2]) / across_norm
        in_sector = cos_angle >= np.cos(HILUM_HALF_ANGLE_RAD)
        hu[(relative >= HILUM_INNER_RADIUS) & in_sector] = a.hilum_hu
    # Multiplicative texture scaled so the solid tissue swings by +-texture_amplitude_hu.
    gain = a.texture_amplitude_hu / max(abs(a.solid_hu), 1.0)
    hu *= (1.0 + gain * a.texture_field(local_mm)).astype(np.float32)
    return relative <= 1.0, hu


def node_box(geometry: VolumeGeometry, centre_ras, appearance: NodeAppearance):
    """Voxel box (start_kji, stop_kji) of all voxels the node can touch, not clipped to the grid."""
    ras_to_ijk = geometry.ras_to_ijk
    scaled = appearance.rotation * (appearance.semi_axes_mm * (1.0 + appearance.margin_amplitude))
    # Exact half-extent of the rotated ellipsoid along each index axis, + a voxel for sub-samples.
    half_ijk = np.linalg.norm(ras_to_ijk[:3, :3] @ scaled, axis=1) + 1.0
    centre_ijk = geometry.ras_to_ijk_points(centre_ras)[0]
    start = np.floor(centre_ijk - half_ijk).astype(int)
    stop = np.ceil(centre_ijk + half_ijk).astype(int) + 1
    return tuple(start[::-1].tolist()), tuple(stop[::-1].tolist())


def node_mask(geometry: VolumeGeometry, centre_ras, appearance: NodeAppearance) -> NodeRender:
    """The node's truth mask (voxel-centre sampling) in its box, without touching any image."""
    start, stop = _clipped_box(geometry, centre_ras, appearance)
    points = voxel_centres_ras(geometry, start, stop)
    inside = relative_radius(appearance, _to_local(points, centre_ras, appearance))[0] <= 1.0
    return NodeRender(start, stop, inside, inside.astype(np.float32))


def render_node(
    image: np.ndarray,
    geometry: VolumeGeometry,
    centre_ras,
    appearance: NodeAppearance,
    spill_allowed: np.ndarray | None = None,
) -> NodeRender:
    """Write the node's HU into `image` (float, [k, j, i], in place) and return its truth mask.

    Voxels whose centre is inside get the node's HU. On thick slices each voxel's HU is the
    average over sub-samples along the thick axis, blended with what the image held before, and
    the node may then spill into neighbouring voxels; `spill_allowed` (bool, image-shaped) limits
    that spill, e.g. to free fat so that neither a neighbouring node nor a vessel is overwritten.
    """
    start, stop = _clipped_box(geometry, centre_ras, appearance)
    factors = subsample_factors(geometry)
    points = _box_points_ras(geometry, start, stop, factors)
    inside, hu = evaluate_node(appearance, _to_local(points, centre_ras, appearance))
    # Sub-sample axes are 1, 3, 5 of (K, fk, J, fj, I, fi); the middle sub-sample is the centre.
    middle = tuple(f // 2 for f in factors)
    mask = inside[:, middle[0], :, middle[1], :, middle[2]]
    count = inside.sum(axis=(1, 3, 5))
    coverage = (count / np.prod(factors)).astype(np.float32)
    mean_hu = np.where(inside, hu, 0.0).sum(axis=(1, 3, 5)) / np.maximum(count, 1)

    box = tuple(slice(a, b) for a, b in zip(start, stop))
    writable = mask | (spill_allowed[box] if spill_allowed is not None else True)
    coverage = np.where(writable, coverage, 0.0).astype(np.float32)
    view = image[box]
    view[...] = coverage * mean_hu + (1.0 - coverage) * view
    return NodeRender(start, stop, mask, coverage)


def subsample_factors(geometry: VolumeGeometry) -> tuple[int, int, int]:
    """Odd sub-samples per voxel along k, j, i: 1 for thin axes, pitch <= 0.6 mm for thick ones."""
    factors = []
    for spacing in geometry.spacing[::-1]:
        n = 1
        if spacing > THICK_AXIS_MM:
            n = int(np.ceil(spacing / SUBSAMPLE_PITCH_MM))
            n += 1 - n % 2  # odd, so the middle sub-sample is the voxel centre
        factors.append(n)
    return tuple(factors)


def _clipped_box(geometry, centre_ras, appearance):
    start, stop = node_box(geometry, centre_ras, appearance)
    start = tuple(max(0, s) for s in start)
    stop = tuple(max(a, min(n, b)) for a, n, b in zip(start, geometry.shape_kji, stop))
    return start, stop


def voxel_centres_ras(geometry: VolumeGeometry, start_kji, stop_kji) -> np.ndarray:
    """RAS mm of the voxel centres in the box [start, stop), shaped (K, J, I, 3)."""
    points = _box_points_ras(geometry, start_kji, stop_kji, (1, 1, 1))
    return points[:, 0, :, 0, :, 0]


def _box_points_ras(geometry, start_kji, stop_kji, factors_kji) -> np.ndarray:
    """RAS points (K, fk, J, fj, I, fi, 3) at sub-sample positions of every voxel in the box."""
    axes = []
    for axis, (a, b, f) in enumerate(zip(start_kji, stop_kji, factors_kji)):
        offsets = (np.arange(f) - (f - 1) / 2.0) / f
        index = (np.arange(a, b)[:, None] + offsets[None, :]).astype(float)
        shape = [1] * 6
        shape[2 * axis : 2 * axis + 2] = index.shape
        axes.append(index.reshape(shape))
    k, j, i = axes
    m = geometry.ijk_to_ras
    return (
        i[..., None] * m[:3, 0] + j[..., None] * m[:3, 1] + k[..., None] * m[:3, 2] + m[:3, 3]
    )


def _to_local(points_ras: np.ndarray, centre_ras, appearance: NodeAppearance) -> np.ndarray:
    """RAS points to the node frame: local = R^T (p - c), written for row vectors."""
    return (points_ras - np.asarray(centre_ras, dtype=float)) @ appearance.rotation


def _random_unit_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    v = rng.normal(size=(count, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _clipped_normal(rng: np.random.Generator, mean: float, sd: float) -> float:
    """Normal(mean, sd) clipped to +-2 sd, so no node gets an implausible attenuation."""
    return float(np.clip(rng.normal(mean, sd), mean - 2.0 * sd, mean + 2.0 * sd))
