"""The zoom policy: which field of view each node is segmented in.

A patch has a fixed number of voxels; its field of view is patch size x patch spacing. A node larger
than the field of view has no edge inside the patch for the network to find, so its mask is cut at
the patch border or comes out empty. The engine therefore looks at every node first at the finest
spacing the model was trained for and looks again, one spacing coarser, when

- the node's mask reaches the patch border, or
- the seed sits in a region of like density that reaches the finest patch's border (a structure
  larger than the patch) and the mask is empty, a few voxels or misses the seed (at any view), or,
  at the finest view, has no edge: most of the shell just outside it is of the same density
  (measured at 1 mm: 50-80 mm spheres give empty masks, a few voxels 20 mm from the seed, or a
  6 mm ball around the seed),

up to the coarsest spacing the model config declares valid (`zoom_spacings_mm`). Of the views
looked at, it keeps the finest one that holds the whole node: a view whose mask is non-empty and
clear of its border, and that would also hold the mask every coarser complete view found. Small
nodes thus keep their full detail; a wider view only wins when it shows the node to be larger than
the finer one could hold.

All geometry here is in patch space: the patch is centred on the seed, axis-aligned in RAS and
isotropic, so a mask's reach from the seed in mm decides whether another view would hold it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .seed_component import keep_seed_component

# Voxels at the patch border that count as touching it: the network's masks fade near the border.
BORDER_VOXELS = 2
# A mask of fewer voxels than a ball of this radius (patch voxels) is a fragment, not a node
# (a 3 mm node at 1 mm has 14 voxels).
FRAGMENT_RADIUS_VOXELS = 1.5
# Like density: 3x3x3-smoothed HU within this many HU of the seed's value.
LIKE_DENSITY_HU = 60.0
# A mask whose outer shell is more than this share of like density has found no edge there (a
# node touching a vessel borders fat over most of its surface; a blob centred on the face of a
# same-density slab, about half of it, is looked at wider too).
EDGELESS_SHARE = 0.4


@dataclass
class PatchView:
    """One node seen through one field of view: the network's patch outputs and their extent."""

    spacing_mm: float
    size: int  # patch voxels per side
    reach_mm: float  # farthest mask voxel edge from the seed along any RAS axis; 0 when empty
    voxels: int = 0  # mask voxels
    covers_seed: bool = False  # the mask holds the voxel(s) at the patch centre, where the seed is
    probability: torch.Tensor | None = None  # (N, N, N) mask probability on the patch grid, CPU
    logit: float = 0.0  # metastasis logit
    mask: np.ndarray | None = None  # (N, N, N) bool: thresholded, seed component only

    @property
    def field_of_view_mm(self) -> float:
        return self.size * self.spacing_mm

    @property
    def empty(self) -> bool:
        return self.reach_mm <= 0.0

    @property
    def touches_border(self) -> bool:
        return not self.empty and not holds(self.reach_mm, self.size, self.spacing_mm)

    @property
    def complete(self) -> bool:
        return not self.empty and not self.touches_border


def holds(reach_mm: float, size: int, spacing_mm: float, border_voxels: int = BORDER_VOXELS) -> bool:
    """Whether a patch of `size` voxels of `spacing_mm`, centred on the seed, holds a mask that
    reaches `reach_mm` from the seed, clear of its `border_voxels` outermost layers."""
    return reach_mm <= (size / 2.0 - border_voxels) * spacing_mm


def patch_view(probability: torch.Tensor, logit: float, spacing_mm: float, threshold: float) -> PatchView:
    """A PatchView of one node's (N, N, N) patch probability."""
    n = probability.shape[-1]
    centre = np.full(3, (n - 1) / 2.0)
    mask = keep_seed_component(probability.numpy() > threshold, centre, (spacing_mm,) * 3)
    if mask.any():
        idx = np.argwhere(mask)
        reach = (float(np.abs(idx - centre).max()) + 0.5) * spacing_mm
    else:
        reach = 0.0
    mid = slice((n - 1) // 2, n // 2 + 1)
    return PatchView(float(spacing_mm), int(n), reach, int(mask.sum()), bool(mask[mid, mid, mid].any()),
                     probability, float(logit), mask)


def like_density_signs(hu_patches: torch.Tensor, masks: list[np.ndarray], border_voxels: int = BORDER_VOXELS,
                       tolerance_hu: float = LIKE_DENSITY_HU) -> tuple[np.ndarray, np.ndarray]:
    """Per node of (B, 1, N, N, N) HU patches and their (N, N, N) seed-component masks: whether
    the region of like density connected to the seed (patch centre) reaches the patch border, and
    the share of like density in the one-voxel shell just outside the mask (NaN when empty)."""
    smooth = F.avg_pool3d(hu_patches.float(), 3, stride=1, padding=1, count_include_pad=False)
    smooth = smooth[:, 0].cpu().numpy()
    n = smooth.shape[-1]
    mid = slice((n - 1) // 2, n // 2 + 1)  # the voxel(s) around the centre
    beyond = np.zeros(len(smooth), dtype=bool)
    edgeless = np.full(len(smooth), np.nan)
    inner = slice(border_voxels, n - border_voxels)
    # the seed's own HU from the unsmoothed voxels at the centre: smoothing would blur a 3 mm node
    # into its fat and make all the fat "like" it
    seed_values = hu_patches[:, 0, mid, mid, mid].float().flatten(1).median(dim=1).values.cpu().numpy()
    for b, (volume, mask) in enumerate(zip(smooth, masks)):
        like = np.abs(volume - float(seed_values[b])) <= tolerance_hu
        if mask.any():
            shell = ndimage.binary_dilation(mask) & ~mask
            edgeless[b] = float(like[shell].mean())
        labels, _ = ndimage.label(like)
        seed_label = np.unique(labels[mid, mid, mid])
        seed_label = seed_label[seed_label > 0]
        if len(seed_label):
            region = np.isin(labels, seed_label)
            beyond[b] = region.sum() > region[inner, inner, inner].sum()
    return beyond, edgeless


def needs_wider_view(views: list[PatchView], like_density_beyond: bool, edgeless_share: float) -> bool:
    """Whether a node seen through `views` (finest first) should be looked at again, wider;
    like_density_beyond and edgeless_share: like_density_signs of the finest view."""
    last = views[-1]
    if last.touches_border:
        return True
    if not like_density_beyond:
        return False
    # a structure larger than the finest view: as long as a view finds only a fragment, or a mask
    # off the seed, the node is still larger than that view (an 80 mm sphere at 1.44 mm gives two
    # voxels); the shell's share of like density is measured at the finest view only
    fragment = last.voxels < 4.0 / 3.0 * np.pi * FRAGMENT_RADIUS_VOXELS**3
    no_edge = len(views) == 1 and bool(edgeless_share > EDGELESS_SHARE)  # NaN (empty mask) compares False
    return fragment or not last.covers_seed or no_edge


def choose_view(views: list[PatchView]) -> PatchView:
    """The finest view that holds the whole node (module docstring).

    When no view is complete: the widest view with a mask (its mask is cut: the caller marks the
    node as touching the field of view), else the finest view (an empty mask).
    """
    for n, view in enumerate(views):
        if view.complete and all(holds(wider.reach_mm, view.size, view.spacing_mm)
                                 for wider in views[n + 1:] if wider.complete):
            return view
    with_mask = [v for v in views if not v.empty]
    return with_mask[-1] if with_mask else views[0]


def spacing_that_holds(reach_mm: float, size: int, spacings, border_voxels: int = 1):
    """The finest of `spacings` whose patch holds a mask reaching `reach_mm` from the seed, and
    whether it does (False: the coarsest spacing, which still cuts the mask)."""
    for spacing in spacings:
        if holds(reach_mm, size, spacing, border_voxels):
            return float(spacing), True
    return float(spacings[-1]), False
