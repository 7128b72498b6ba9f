"""LA-Net's two-stage semi-supervised mask training (docs/methods.md, section 5).

Stage 1 (the first `stage1_epochs` epochs) trains the mask branches on nodes with a true mask
only (and, by default, not the metastasis head). Stage 2 trains everything; nodes that have no
mask (a label only, common in practice) get a pseudo-mask 1[sigmoid(logits) >= threshold] from the
network's own prediction, detached, and their mask loss is weighted `weight` (0.1). Nodes whose
pseudo-mask is empty are left out: an empty target would teach the mask head to predict nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PseudoMaskConfig:
    """Attributes:
        threshold: probability above which a voxel joins the pseudo-mask (LA-Net: 0.8).
        weight: loss weight of a pseudo-masked node (LA-Net: 0.1); true masks keep weight 1.
        stage1_epochs: epochs of stage 1 (true masks only).
        classify_in_stage1: whether the metastasis head also trains in stage 1.
    """

    threshold: float = 0.8
    weight: float = 0.1
    stage1_epochs: int = 0
    classify_in_stage1: bool = False

    @classmethod
    def from_dict(cls, d: dict | None) -> "PseudoMaskConfig | None":
        return None if d is None else cls(**d)

    def in_stage1(self, epoch: int) -> bool:
        return epoch < self.stage1_epochs


def pseudo_mask_targets(
    mask_logits: torch.Tensor,
    mask: torch.Tensor,
    has_mask: torch.Tensor,
    threshold: float = 0.8,
    weight: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and per-node weights for a mask loss over the whole batch.

    Args:
        mask_logits: (B, 1, ...) predicted mask logits (any grid; `mask` must be on the same grid).
        mask: (B, 1, ...) true masks (ignored where has_mask is False).
        has_mask: (B,) bool, which nodes have a true mask.
        threshold: pseudo-mask probability threshold.
        weight: weight of pseudo-masked nodes.

    Returns:
        targets (B, 1, ...): the true mask where there is one, else 1[sigmoid(logits) >= threshold];
        weights (B,): 1 for true masks, `weight` for non-empty pseudo-masks, 0 for empty ones.
    """
    pseudo = (torch.sigmoid(mask_logits.detach().float()) >= threshold).to(mask.dtype)
    view = (-1,) + (1,) * (mask.dim() - 1)
    targets = torch.where(has_mask.view(view), mask, pseudo)
    non_empty = pseudo.flatten(1).sum(1) > 0
    weights = torch.where(has_mask, torch.ones_like(has_mask, dtype=torch.float32),
                          non_empty.float() * float(weight))
    return targets, weights
