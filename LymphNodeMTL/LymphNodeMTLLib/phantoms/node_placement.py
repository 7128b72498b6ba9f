"""What the phantom worlds share in placing nodes: the order, the room map that proposes centres,
and the quick and exact tests of where a node may lie.

Each world keeps its own rules (the spec: only in free fat with a 2 mm margin; the wide world: also
against similar tissue or an earlier node) and its own seeds; these are the parts they have in common.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..core.geometry import VolumeGeometry
from .features import NodeFeatures, sample_feature_arrays
from .node_renderer import NodeAppearance

NODE_GAP_MM = 2.0  # free fat kept around a node where it sits in fat
SEED_JITTER_MM = 3.0  # a seed lies within this distance of its node's centre
ROOM_BLOCK_MM = 2.0  # the room map's block size

# Directions to 26 points around a node: its axes and the diagonals between them.
_PROBE_DIRECTIONS = np.array([v for v in np.ndindex(3, 3, 3) if v != (1, 1, 1)], dtype=float) - 1.0
_PROBE_DIRECTIONS /= np.linalg.norm(_PROBE_DIRECTIONS, axis=1, keepdims=True)


def features_largest_first(rng: np.random.Generator, count: int) -> list[NodeFeatures]:
    """`count` nodes' features, largest (short axis times axis ratio) first: the order of placement,
    so the largest nodes find room before the smaller ones fill it."""
    arrays = sample_feature_arrays(rng, count)
    order = np.argsort(-arrays["short_axis_mm"] * arrays["axis_ratio"], kind="stable")
    return [NodeFeatures(**{k: v[i].item() for k, v in arrays.items()}) for i in order]


def clear_border(volume: np.ndarray) -> None:
    """Mark the grid's faces False (in place): a node kept off them is never cut by the grid's edge."""
    for axis in range(volume.ndim):
        index = [slice(None)] * volume.ndim
        index[axis] = [0, -1]
        volume[tuple(index)] = False


class RoomMap:
    """Coarse map (blocks of about 2 mm) of room: how far, in mm, each block is from the nearest block
    not wholly `allowed` for a node.

    Computed once per case, it only proposes centres where a node's inscribed ball could fit; the
    exact tests decide, so the map may go stale as nodes are placed. Other per-block maps on the same
    blocks come from all_of, any_of and distance_mm.
    """

    def __init__(self, allowed: np.ndarray, geometry: VolumeGeometry):
        spacing_kji = geometry.spacing[::-1]
        self.factors = np.maximum(1, np.round(ROOM_BLOCK_MM / spacing_kji)).astype(int)
        self._shape = np.asarray(allowed.shape) // self.factors
        self._block_mm = spacing_kji * self.factors
        self.slack_mm = float(np.linalg.norm(self._block_mm))  # a block centre's distance error
        self.room_mm = self.distance_mm(self.all_of(allowed))

    def all_of(self, volume: np.ndarray) -> np.ndarray:
        """Per block: whether all of its voxels are True."""
        return self._blocks(volume).all(axis=(1, 3, 5))

    def any_of(self, volume: np.ndarray) -> np.ndarray:
        """Per block: whether any of its voxels is True."""
        return self._blocks(volume).any(axis=(1, 3, 5))

    def distance_mm(self, blocks: np.ndarray) -> np.ndarray:
        """Per block: distance (mm) to the nearest False block."""
        return ndimage.distance_transform_edt(blocks, sampling=self._block_mm)

    def has_room(self, radius_mm: float) -> np.ndarray:
        """Per block: whether a ball of `radius_mm` around its centre may be wholly allowed."""
        return self.room_mm >= radius_mm - self.slack_mm

    def random_voxel(self, rng: np.random.Generator, flat_blocks: np.ndarray) -> np.ndarray:
        """A random voxel (k, j, i) of a random block among `flat_blocks` (flat indices, not empty)."""
        block = np.array(np.unravel_index(flat_blocks[rng.integers(len(flat_blocks))], self.room_mm.shape))
        return block * self.factors + rng.integers(0, self.factors)

    def _blocks(self, volume: np.ndarray) -> np.ndarray:
        (nk, nj, ni), (fk, fj, fi) = self._shape, self.factors
        cropped = volume[: nk * fk, : nj * fj, : ni * fi]
        return cropped.reshape(nk, fk, nj, fj, ni, fi)


def probes_inside(geometry: VolumeGeometry, where: np.ndarray, centre_ras, appearance: NodeAppearance,
                  semi_axes_mm) -> bool:
    """Whether the voxels at 26 points around a node (its axes and the diagonals between them, on
    the ellipsoid of `semi_axes_mm` in the node's frame) all lie in `where`, inside the grid: a cheap
    test that rejects most unfit positions before the exact one."""
    points = np.asarray(centre_ras) + (_PROBE_DIRECTIONS * semi_axes_mm) @ appearance.rotation.T
    kji = np.round(geometry.ras_to_ijk_points(points)).astype(int)[:, ::-1]
    if np.any(kji < 0) or np.any(kji >= where.shape):
        return False
    return bool(where[tuple(kji.T)].all())


def gap_shell(mask: np.ndarray, geometry: VolumeGeometry) -> np.ndarray:
    """Voxels within NODE_GAP_MM of the mask (the mask included), in the mask's box."""
    return ndimage.distance_transform_edt(~mask, sampling=geometry.spacing[::-1]) <= NODE_GAP_MM
