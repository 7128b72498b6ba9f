"""Dice of two boolean masks on one grid: how the evaluation scores a mask against its truth and
how the engine tells how stable a mask is under a threshold change."""

from __future__ import annotations

import numpy as np


def dice_score(a: np.ndarray, b: np.ndarray) -> float:
    """2|a & b| / (|a| + |b|); two empty masks agree (1)."""
    denom = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / denom) if denom else 1.0
