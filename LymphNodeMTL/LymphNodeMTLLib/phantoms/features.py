"""Latent node features and the known label model of the phantom specification (v1).

docs/phantom-spec.md fixes the distributions and the logit; everything here follows it
exactly, so the Bayes ceiling (the AUC of the true probability P) is known. Functions work on numpy
scalars or arrays alike, so 20 000 nodes cost one call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np


@dataclass(frozen=True)
class NodeFeatures:
    """One node's latent features (spec symbol in brackets).

    Attributes:
        short_axis_mm: short-axis diameter in mm (s).
        axis_ratio: long/short axis ratio (r).
        necrosis_fraction: radius of the necrotic core relative to the node's radius, 0 = none (n).
        margin_irregularity: 0 smooth .. 1 very irregular surface (m).
        heterogeneity: 0 homogeneous .. 1 strongly textured interior (h).
        fatty_hilum: whether the node has a fatty hilum (f).
    """

    short_axis_mm: float
    axis_ratio: float
    necrosis_fraction: float
    margin_irregularity: float
    heterogeneity: float
    fatty_hilum: bool

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def logit(self) -> float:
        return float(metastasis_logit(**self.as_dict()))

    @property
    def probability(self) -> float:
        """P, the true probability that this node is metastatic."""
        return float(metastasis_probability(**self.as_dict()))


FEATURE_NAMES = tuple(f.name for f in fields(NodeFeatures))


def sample_feature_arrays(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    """Draw `count` nodes' features from the spec's distributions; one array per feature name."""
    necrotic = rng.random(count) >= 0.75
    return {
        "short_axis_mm": np.clip(np.exp(rng.normal(np.log(8.0), 0.45, count)), 3.0, 30.0),
        "axis_ratio": np.clip(1.0 + rng.gamma(2.0, 0.3, count), 1.0, 3.0),
        "necrosis_fraction": np.where(necrotic, rng.uniform(0.1, 0.5, count), 0.0),
        "margin_irregularity": rng.beta(2.0, 5.0, count),
        "heterogeneity": rng.beta(2.0, 5.0, count),
        "fatty_hilum": rng.random(count) < 0.5,
    }


def sample_node_features(rng: np.random.Generator, count: int) -> list[NodeFeatures]:
    """Draw `count` nodes' features as NodeFeatures objects (plain Python scalars)."""
    arrays = sample_feature_arrays(rng, count)
    return [
        NodeFeatures(**{name: arrays[name][i].item() for name in FEATURE_NAMES})
        for i in range(count)
    ]


def metastasis_logit(
    short_axis_mm, axis_ratio, necrosis_fraction, margin_irregularity, heterogeneity, fatty_hilum
):
    """The spec's label-model logit; scalars or arrays."""
    return (
        1.2 * (np.asarray(short_axis_mm) - 10.0) / 3.0
        + 1.0 * (1.8 - np.asarray(axis_ratio))
        + 6.0 * np.asarray(necrosis_fraction)
        + 3.0 * (np.asarray(margin_irregularity) - 0.3)
        + 2.0 * (np.asarray(heterogeneity) - 0.3)
        - 1.5 * np.asarray(fatty_hilum, dtype=float)
        - 0.3
    )


def metastasis_probability(**features):
    """P = sigmoid(logit); takes the same keyword arguments as `metastasis_logit`."""
    return 1.0 / (1.0 + np.exp(-metastasis_logit(**features)))


def sample_labels(rng: np.random.Generator, probability) -> np.ndarray:
    """label ~ Bernoulli(P), as int 0/1 with P's shape."""
    p = np.asarray(probability, dtype=float)
    return (rng.random(p.shape) < p).astype(np.int64)
