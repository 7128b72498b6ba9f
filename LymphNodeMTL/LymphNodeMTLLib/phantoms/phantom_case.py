"""What every phantom world returns: the CT, its label map and the truth per node (docs/phantom-spec.md, section 5)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.case import Case, Seed
from ..core.geometry import VolumeGeometry
from .features import NodeFeatures
from .node_renderer import NodeAppearance


@dataclass
class PhantomNode:
    """Ground truth for one node.

    Attributes:
        node_id: the seed's id ("N01", ...).
        centre_ras: the node's centre, RAS mm.
        seed_ras: the simulated click: inside the mask, within 3 mm of the centre.
        mask_value: the node's value in the case's label map.
        features: the latent features that drive P.
        probability: P, the true probability of metastasis.
        label: 1 metastatic, 0 benign, drawn from Bernoulli(P).
        appearance: how the node was drawn (axes, orientation, attenuations).
    """

    node_id: str
    centre_ras: tuple[float, float, float]
    seed_ras: tuple[float, float, float]
    mask_value: int
    features: NodeFeatures
    probability: float
    label: int
    appearance: NodeAppearance

    @classmethod
    def drawn(cls, mask_value: int, centre_ras, seed_ras, features: NodeFeatures, label: int,
              appearance: NodeAppearance) -> PhantomNode:
        """A drawn node's truth: its id follows the mask value, P follows the features."""
        return cls(
            node_id=f"N{mask_value:02d}",
            centre_ras=tuple(float(c) for c in centre_ras),
            seed_ras=tuple(float(c) for c in seed_ras),
            mask_value=int(mask_value),
            features=features,
            probability=features.probability,
            label=int(label),
            appearance=appearance,
        )


@dataclass
class PhantomCase:
    """A phantom CT (float32 HU, [k, j, i]) with its geometry, label map and per-node truth."""

    image: np.ndarray
    geometry: VolumeGeometry
    label_map: np.ndarray  # int16, node i has value i + 1, 0 elsewhere
    nodes: list[PhantomNode]
    metadata: dict = field(default_factory=dict)

    def to_case(self) -> Case:
        """The engine's input: the image and one seed per node, ids as in `nodes`."""
        seeds = [Seed(n.node_id, n.seed_ras) for n in self.nodes]
        return Case(self.image, self.geometry, seeds, dict(self.metadata))
