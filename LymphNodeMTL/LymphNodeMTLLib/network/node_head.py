"""The metastasis head: an MLP over everything the head reads, plus a linear path from the node
descriptors straight to the logit.

The descriptors (size, shape, core-to-body drop, fat inside the node) carry most of what a short
training run can use, and a logistic-regression path learns their weights within an epoch; the
MLP adds what the pooled image features know beyond them ("wide and deep").

A refit on soft labels (descriptor_refit.py) adds a third part, `refine`: a small MLP over the
descriptors and the deep MLP's logit that then gives the head's logit on its own. Its width is in
the model config (network.head_refine_hidden), so a refined model rebuilds with it.
"""

from __future__ import annotations

import torch
from torch import nn

from .node_descriptors import NUM_DESCRIPTORS


class NodeHead(nn.Module):
    """(B, width) head input whose last NUM_DESCRIPTORS columns are the descriptors -> (B, 1) logit.

    Args:
        width: head input width (NodeHeadInput.width).
        hidden: width of the MLP.
        dropout: dropout before the MLP's last layer.
        outputs: output columns (2 for the mixed classification + regression head).
        refine_hidden: width of the refine MLP; 0 for none (single-output heads only).
    """

    def __init__(self, width: int, hidden: int = 64, dropout: float = 0.1, outputs: int = 1,
                 refine_hidden: int = 0):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, outputs))
        self.wide = nn.Linear(NUM_DESCRIPTORS, outputs)
        self.refine = None
        if refine_hidden:
            self.set_refine(refine_hidden)

    def set_refine(self, hidden: int) -> None:
        """Attach a fresh refine MLP of this width (0: remove it, back to deep + wide)."""
        if hidden and self.wide.out_features != 1:
            raise ValueError("only a single-logit head can have a refine MLP")
        self.refine = (nn.Sequential(nn.Linear(NUM_DESCRIPTORS + 1, hidden), nn.GELU(), nn.Linear(hidden, 1))
                       .to(self.wide.weight) if hidden else None)

    def refine_input(self, head_input: torch.Tensor) -> torch.Tensor:
        """(B, NUM_DESCRIPTORS + 1): the descriptors and the deep MLP's logit."""
        return torch.cat([head_input[:, -NUM_DESCRIPTORS:], self.mlp(head_input)], dim=1)

    def forward(self, head_input: torch.Tensor) -> torch.Tensor:
        if self.refine is not None:
            return self.refine(self.refine_input(head_input))
        return self.mlp(head_input) + self.wide(head_input[:, -NUM_DESCRIPTORS:])
