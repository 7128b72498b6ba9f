"""The metastasis head: an MLP over everything the head reads, plus a linear path from the node
descriptors straight to the logit.

The descriptors (size, shape, core-to-body drop, fat inside the node) carry most of what a short
training run can use, and a logistic-regression path learns their weights within an epoch; the
MLP adds what the pooled image features know beyond them ("wide and deep").
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
    """

    def __init__(self, width: int, hidden: int = 64, dropout: float = 0.1, outputs: int = 1):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, outputs))
        self.wide = nn.Linear(NUM_DESCRIPTORS, outputs)

    def forward(self, head_input: torch.Tensor) -> torch.Tensor:
        return self.mlp(head_input) + self.wide(head_input[:, -NUM_DESCRIPTORS:])
