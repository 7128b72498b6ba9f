"""What the metastasis head reads besides pooled features: the node's size, shape and CT signs.

Mean pooling under the mask is size-blind by construction, yet size, elongation, margin,
central necrosis and a fatty hilum are what radiologists stage nodes by. These descriptors hand
the head that information explicitly, computed from the same (predicted, given or corrected) mask
it pools under, so re-classifying an edited mask changes them too. The CT signs are read inside
the mask's moment ellipsoid rather than under the mask itself, so a mask that leaves a fatty
hilum out (as a network's tends to) and one that includes it (as a radiologist draws it) describe
the node alike.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..preprocessing.network_input import unwindow_hu
from .batch_spacing import by_spacing, spacing_of_batch
from .hilum_sectors import ellipsoid_frame, hilum_sector_signs

# HU thresholds of the radiologic signs: fat (a fatty hilum) is below FAT_HU; solid node tissue
# is around SOLID_HU and a necrotic core some CONTRAST_HU lower.
FAT_HU = -30.0
SOLID_HU = 45.0
CONTRAST_HU = 30.0
# Shells of relative radius (moment ellipsoid = 1) for the radial profile: necrosis is a
# concentric core, a fatty hilum a notch in the outer quarter.
PROFILE_EDGES = (0.0, 0.25, 0.45, 0.65, 0.85, 1.0)
CORE_RADIUS = 0.35
BODY_RADII = (0.5, 0.85)
RADIOLOGIC_RADIUS = BODY_RADII[1]
MIN_NOISE_VOXELS = 500  # unclipped voxels a patch needs for its noise anisotropy
DESCRIPTOR_NAMES = (
    "log_volume", "log_diameter_short", "log_diameter_mid", "log_diameter_long", "compactness",
    "mean_windowed", "sd_windowed", "ellipsoid_mismatch", "core_drop", "core_drop_z", "noise",
    "lowest_smoothed", "fat_inside", "texture",
    *(f"profile_hu_{i}" for i in range(len(PROFILE_EDGES) - 1)),
    *(f"profile_fat_{i}" for i in range(len(PROFILE_EDGES) - 1)),
    # appended last, so a model saved with the descriptors before them still loads (model_store)
    "noise_anisotropy",
    "hilum_sector_drop", "hilum_sector_drop_z", "hilum_mask_gap",
    "log_slice_mm",
)
NUM_DESCRIPTORS = len(DESCRIPTOR_NAMES)
# descriptor counts of models saved by earlier versions; each added descriptor was appended last
EARLIER_NUM_DESCRIPTORS = (24, 25, 28)


def _moments(m: torch.Tensor, spacing_mm: float):
    """Centroid (B, 3), covariance (B, 3, 3) and voxel coordinates (1, N, 3) in mm of mask m."""
    b, _, d, h, w = m.shape
    weights = m.float().flatten(1)
    n = weights.sum(1).clamp_min(1.0)
    axes = [torch.arange(s, device=m.device, dtype=torch.float32) * spacing_mm for s in (d, h, w)]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    coords = torch.stack([xx, yy, zz], dim=-1).view(1, -1, 3)
    mean = (weights.unsqueeze(-1) * coords).sum(1) / n.unsqueeze(-1)
    centred = coords - mean.unsqueeze(1)
    cov = torch.einsum("bn,bni,bnj->bij", weights, centred, centred) / n.view(-1, 1, 1)
    cov = cov + torch.eye(3, device=m.device) * (spacing_mm**2 / 12.0)  # a voxel's own extent
    return mean, cov, coords


def _diameters(cov: torch.Tensor) -> torch.Tensor:
    eig = torch.linalg.eigvalsh(cov.double()).float().clamp_min(0.0)
    return 2.0 * torch.sqrt(5.0 * eig)


def _relative_radius(mean: torch.Tensor, cov: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """(B, N) each voxel's radius relative to the moment ellipsoid: 0 at the centroid, 1 on its
    surface. Necrosis is a concentric core and a fatty hilum notches the surface, so both are
    read along this radius, whatever the node's size and orientation."""
    centred = coords - mean.unsqueeze(1)
    inv = torch.linalg.inv((5.0 * cov).double()).float()
    return torch.einsum("bni,bij,bnj->bn", centred, inv, centred).clamp_min(0.0).sqrt()


def principal_diameters_mm(mask: torch.Tensor, spacing_mm: torch.Tensor | float) -> torch.Tensor:
    """(B, 3) ascending diameters of the ellipsoid with the mask's second moments: a solid
    ellipsoid of semi-axis a has variance a^2 / 5 along that axis, so d = 2 sqrt(5 lambda).
    spacing_mm: (B,) patch voxel size, or one number for all."""
    return by_spacing(lambda s, m: _diameters(_moments(m, s)[1]), spacing_mm, mask)


def noise_anisotropy(hu: torch.Tensor, smooth: torch.Tensor, hu_window: tuple[float, float],
                     flat_share: float = 0.25) -> torch.Tensor:
    """(B,) half the log ratio of the largest to the smallest eigenvalue of the covariance of the
    patch's voxel-to-voxel HU differences, over its flattest voxels: about log(slice spacing /
    in-plane spacing) of the CT the patch was resampled from.

    A CT's noise is independent from voxel to voxel, so a patch resampled from thick slices has
    noise that varies slowly along the slice axis, whatever way the volume is oriented (hence the
    eigenvalues, not the patch axes). Thick slices blur a node's size, shape and CT signs, so the
    head needs to know how far to trust them; the patch carries that itself, so a re-classified or
    re-oriented volume needs nothing else. Only voxels whose 2x2x2 cell lies inside the HU window
    (clipped voxels have no noise) and, of those, the `flat_share` with the smallest smoothed
    gradient (away from edges, which would swamp the noise) are read. 0 where too few are left.
    """
    b = hu.shape[0]

    def differences(v):  # (B, N, 3) forward differences along x, y, z
        base = v[:, :, :-1, :-1, :-1]
        return torch.stack([v[:, :, :-1, :-1, 1:] - base, v[:, :, :-1, 1:, :-1] - base,
                            v[:, :, 1:, :-1, :-1] - base], dim=-1).flatten(1, -2)

    unclipped = ((hu > hu_window[0] + 0.5) & (hu < hu_window[1] - 0.5)).float()
    cell = (-F.max_pool3d(-unclipped, 2, stride=1)).flatten(1)
    steep = differences(smooth).norm(dim=-1)
    steep = torch.where(cell > 0, steep, torch.full_like(steep, float("inf")))
    count = cell.sum(1)
    # the flatness threshold from every 16th voxel: a full sort would cost more than the rest
    sample = steep[:, ::16]
    kth = (flat_share * torch.isfinite(sample).sum(1)).long().clamp_min(1)
    threshold = sample.sort(1).values.gather(1, (kth - 1).unsqueeze(1))
    weights = (steep <= threshold).float() * cell
    g = differences(hu)
    cov = (g * weights.unsqueeze(-1)).transpose(1, 2) @ g / weights.sum(1).clamp_min(1.0).view(b, 1, 1)
    eig = torch.linalg.eigvalsh(cov.double()).clamp_min(1e-6)
    ratio = (0.5 * torch.log(eig[:, 2] / eig[:, 0])).float()
    return torch.where(count >= MIN_NOISE_VOXELS, ratio, torch.zeros_like(ratio))


def _masked_mean(values: torch.Tensor, weights: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    total = weights.sum(1)
    mean = (values * weights).sum(1) / total.clamp_min(1.0)
    return torch.where(total > 0, mean, fallback)


def node_descriptors(mask: torch.Tensor, image: torch.Tensor, spacing_mm: torch.Tensor | float,
                     hu_window: tuple[float, float] = (-250.0, 350.0),
                     slice_mm: torch.Tensor | None = None) -> torch.Tensor:
    """(B, NUM_DESCRIPTORS), in the order of DESCRIPTOR_NAMES, of the binarised mask and the
    windowed CT (as the network reads it) on patches of `spacing_mm` (B,) (or one number for all),
    and `slice_mm` (B,): the
    coarsest voxel spacing of the CT each patch was sampled from (None: as fine as the patch).

    Size and shape (from the mask): log volume, log principal diameters, surface compactness, the
    mask's disagreement with its moment ellipsoid (an irregular margin). Inside the ellipsoid:
    mean and SD of the windowed CT; the core-to-body HU drop of non-fat tissue (central necrosis),
    also in units of its standard error; the residual noise (so the head can weigh a drop against
    noise); the lowest smoothed HU and the share of smoothed voxels below fat level (a fatty
    hilum); the SD of the smoothed HU (heterogeneity); a radial profile over ellipsoid shells
    of the mean non-fat HU and the fat fraction; the patch's noise anisotropy (how thick the
    source slices were); and the fatty-hilum signs of its darkest sector around the long axis
    (hilum_sectors.py); last, the log of the source CT's slice thickness. HU figures are scaled to
    about unit range. All zero for an empty mask.

    Why the slice thickness is given and not only estimated: a fatty hilum or a necrotic core a
    few mm across is blurred away on 5 mm slices, so how much an absent sign says depends on the
    slices. The noise anisotropy estimates it from the patch, but on the phantoms' head inputs the
    true value still added 0.003 of AUC (soft-label MLP, 8.4k training nodes: validation 0.800 ->
    0.803, test 0.822 -> 0.826). The caller knows it exactly: it sampled the patch.
    """
    spacing_mm = spacing_of_batch(spacing_mm, mask.shape[0], float("nan"), mask.device)
    slice_mm = spacing_mm if slice_mm is None else slice_mm.to(spacing_mm)
    return by_spacing(lambda s, m, i, t: _descriptors_at(m, i, s, hu_window, t), spacing_mm, mask, image, slice_mm)


def _descriptors_at(mask: torch.Tensor, image: torch.Tensor, spacing_mm: float, hu_window,
                    slice_mm: torch.Tensor) -> torch.Tensor:
    """node_descriptors of patches that share one spacing."""
    m = (mask > 0.5).float()
    voxels = m.flatten(1).sum(1)
    present = (voxels > 0).float().unsqueeze(1)
    zeros = torch.zeros_like(voxels)
    volume = voxels * spacing_mm**3
    moments = _moments(m, spacing_mm)  # one pass serves the diameters and the relative radius
    diam = _diameters(moments[1])
    eroded = -F.max_pool3d(-m, kernel_size=3, stride=1, padding=1)
    surface = (m - eroded).flatten(1).sum(1)
    # surface voxels against a sphere's for this volume: 1 for a ball, larger when irregular
    compactness = surface / (4.84 * voxels.clamp_min(1.0) ** (2.0 / 3.0))
    inside = m.flatten(1)
    hu_img = unwindow_hu(image.float(), hu_window)
    hu = hu_img.flatten(1)
    smooth_img = F.avg_pool3d(hu_img, 3, stride=1, padding=1, count_include_pad=False)
    smooth = smooth_img.flatten(1)
    rho = _relative_radius(*moments)
    mismatch = ((rho <= 1.0).float() - inside).abs().sum(1) / voxels.clamp_min(1.0)
    # Intensities are read inside the moment ellipsoid, not under the mask itself: a predicted
    # mask tends to leave a fatty hilum out where a drawn one includes it, and the ellipsoid of
    # either is nearly the same.
    within = (rho < RADIOLOGIC_RADIUS).float()
    nonfat = (hu > FAT_HU).float()
    solid = within * nonfat
    values = image.float().flatten(1)
    mean = _masked_mean(values, within, zeros)
    sd = _masked_mean((values - mean.unsqueeze(1)) ** 2, within, zeros).sqrt()
    solid_hu = _masked_mean(hu, solid, torch.full_like(voxels, SOLID_HU))
    body = solid * (rho >= BODY_RADII[0]).float()
    body_hu = _masked_mean(hu, body, solid_hu)
    core = solid * (rho < CORE_RADIUS).float()
    core_hu = _masked_mean(hu, core, body_hu)
    noise = _masked_mean((hu - smooth) ** 2, solid, zeros).sqrt()
    texture = _masked_mean((smooth - solid_hu.unsqueeze(1)) ** 2, solid, zeros).sqrt()
    # fat reaching into the node (a hilum), on the smoothed HU
    lowest = torch.where(within > 0, smooth, torch.full_like(smooth, 1e4)).amin(1)
    lowest = torch.where(within.sum(1) > 0, lowest, solid_hu)
    fat_inside = _masked_mean((smooth <= FAT_HU / 2).float(), within, zeros)
    fat = 1.0 - nonfat
    profile_hu, profile_fat = [], []
    for r0, r1 in zip(PROFILE_EDGES[:-1], PROFILE_EDGES[1:]):
        shell = ((rho >= r0) & (rho < r1)).float()
        profile_hu.append((_masked_mean(hu, shell * nonfat, solid_hu) - SOLID_HU) / CONTRAST_HU)
        profile_fat.append(_masked_mean(fat, shell, zeros) * 4.0)
    feats = torch.stack([
        torch.log1p(volume) / math.log(1e4),
        torch.log1p(diam[:, 0]) / math.log(30.0),
        torch.log1p(diam[:, 1]) / math.log(30.0),
        torch.log1p(diam[:, 2]) / math.log(30.0),
        compactness,
        mean,
        sd,
        mismatch,
        (body_hu - core_hu) / CONTRAST_HU,
        # the same drop in units of its standard error: how sure the necrosis is
        ((body_hu - core_hu) * core.sum(1).sqrt() / (noise + 1.0) / 10.0).clamp(-3.0, 3.0),
        noise / 10.0,
        (SOLID_HU - lowest.clamp(-150.0, 150.0)) / 100.0,
        fat_inside * 4.0,
        texture / 10.0,
        *profile_hu,
        *profile_fat,
        noise_anisotropy(hu_img, smooth_img, hu_window),
    ], dim=1)
    hilum = hilum_sector_signs(ellipsoid_frame(*moments), hu, inside, noise)
    log_slice = torch.log(slice_mm.to(voxels).clamp_min(1e-3)).unsqueeze(1)
    feats = torch.cat([feats, hilum, log_slice], dim=1)
    return feats * present


class NodeHeadInput(nn.Module):
    """Soft-mask pooled feature means and SDs at every scale, plus the node descriptors.

    Args:
        channels: feature channels per scale.
        pool_sigma_mm: context margin of the soft mask pooling (M2ANet).
        hu_window: the preprocessing HU window, to read HU back from the network input.
    """

    def __init__(self, channels, pool_sigma_mm: float = 3.0, hu_window: tuple[float, float] = (-250.0, 350.0)):
        super().__init__()
        from .components.soft_mask_pooling import SoftMaskPooling

        self.pooling = SoftMaskPooling(pool_sigma_mm, second_moment=True)
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        self.width = 2 * sum(int(c) for c in channels) + NUM_DESCRIPTORS

    def forward(self, feats, mask: torch.Tensor, image: torch.Tensor, spacing_mm: torch.Tensor,
                slice_mm: torch.Tensor | None = None) -> torch.Tensor:
        """spacing_mm: (B,) patch voxel size; slice_mm: (B,) the source CT's coarsest spacing per
        node (node_descriptors)."""
        pooled = self.pooling(feats, mask, spacing_mm)
        desc = node_descriptors(mask, image, spacing_mm, self.hu_window, slice_mm)
        return torch.cat([pooled, desc.to(pooled.dtype)], dim=1)
