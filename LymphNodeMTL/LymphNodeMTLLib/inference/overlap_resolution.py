"""Each CT voxel belongs to at most one node: where two nodes' masks overlap, the more confident wins."""

from __future__ import annotations

import numpy as np

from .mask_pasting import PastedProbability


def _intersection(a: PastedProbability, b: PastedProbability):
    lo = np.maximum(a.start_kji, b.start_kji)
    hi = np.minimum(a.stop_kji, b.stop_kji)
    if np.any(hi <= lo):
        return None
    return lo, hi


def _local(box: PastedProbability, lo, hi):
    return tuple(slice(int(l - s), int(h - s)) for l, h, s in zip(lo, hi, box.start_kji))


def resolve_overlaps(boxes: list[PastedProbability], threshold: float = 0.5) -> None:
    """Zero, in place, the probability of the losing node in every doubly claimed voxel.

    A voxel claimed (probability > threshold) by several nodes goes to the highest probability; on
    a tie, to the node listed first. Only pairs whose boxes intersect are compared.
    """
    for ia in range(len(boxes)):
        for ib in range(ia + 1, len(boxes)):
            a, b = boxes[ia], boxes[ib]
            inter = _intersection(a, b)
            if inter is None:
                continue
            pa = a.probability[_local(a, *inter)]
            pb = b.probability[_local(b, *inter)]
            both = (pa > threshold) & (pb > threshold)
            if not both.any():
                continue
            a_wins = pa >= pb
            pb[both & a_wins] = 0.0
            pa[both & ~a_wins] = 0.0
