"""Classification metrics on per-node probabilities (hand-checkable definitions)."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve by the Mann-Whitney rank statistic (ties count one half)."""
    labels = np.asarray(labels, dtype=float)
    scores = np.asarray(scores, dtype=float)
    pos, neg = labels == 1, labels == 0
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def expected_calibration_error(labels, probabilities, bins: int = 10) -> float:
    """ECE with equal-width probability bins: sum_b |B|/N * |mean(y in B) - mean(p in B)|."""
    labels = np.asarray(labels, dtype=float)
    p = np.asarray(probabilities, dtype=float)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(labels[sel].mean() - p[sel].mean())
    return float(ece)
