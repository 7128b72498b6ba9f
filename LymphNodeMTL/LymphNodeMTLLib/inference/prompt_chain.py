"""A node's prompts run as a chain on one patch: the start (seed, line or box), then one step per
click, each step reading every click so far and the mask the step before gave.

The view (patch centre and spacing) is fixed for the whole chain, so "the mask so far" is exactly
the previous step's patch mask. A line or a box sets it: the patch is centred on the line's or
box's middle, at the finest of the model's spacings that holds the extent they give (no zoom
guessing). A node started from its seed keeps the view the zoom policy chose for it
(field_of_view.py) and that view's mask is the chain's first step. Clicks must lie inside the view,
clear of its border; one farther out widens it (and the chain is run again in the wider view).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..core.errors import InputError
from ..core.node_prompts import NodePrompts
from ..preprocessing.prompt_channels import PatchPrompts, ras_to_patch_index
from .field_of_view import BORDER_VOXELS, holds

# A line of length L drawn on a node: the node reaches about L / 2 from the line's middle in its
# plane; a quarter more covers the ends' imprecision and an extent across slices a little longer.
LINE_REACH = 0.625
# A box is the node's extent already; a tenth more keeps the box itself clear of the patch border.
BOX_REACH = 1.1
# Clicks stay this many voxels inside the border of the view they are read in.
CLICK_BORDER_VOXELS = 4


@dataclass(frozen=True)
class PromptView:
    """The patch a node's chain runs on."""

    centre_ras: tuple[float, float, float]
    spacing_mm: float


def extent_reach_mm(prompts: NodePrompts, centre) -> float:
    """How far the node reaches from `centre` by its line and box (0 without either)."""
    reach = 0.0
    if prompts.line is not None:
        ends = np.asarray(prompts.line, dtype=float)
        reach = LINE_REACH * float(np.linalg.norm(ends[1] - ends[0]))
        reach = max(reach, float(np.abs(ends - centre).max()))
    if prompts.box is not None:
        corners = np.asarray(prompts.box, dtype=float)
        reach = max(reach, BOX_REACH * float(np.abs(corners - centre).max()))
    return reach


def click_reach_mm(prompts: NodePrompts, centre) -> float:
    """How far the seed and the clicks lie from `centre` along any RAS axis."""
    points = [c.ras for c in prompts.clicks] + ([prompts.seed] if prompts.seed is not None else [])
    if not points:
        return 0.0
    return float(np.abs(np.asarray(points, dtype=float) - centre).max())


def choose_prompt_view(prompts: NodePrompts, spacings, size: int, start_spacing: float | None = None) -> PromptView:
    """The view of a node's chain: centred on its anchor, at the finest of `spacings` (from
    `start_spacing` up, the zoom policy's choice for a seed-started node) that holds its extent
    and its clicks. An extent too large for the widest view gets the widest (the mask is then
    cut: the node's status says so); a click beyond it is refused."""
    centre = prompts.anchor
    extent, clicks = extent_reach_mm(prompts, centre), click_reach_mm(prompts, centre)
    candidates = [float(s) for s in spacings if start_spacing is None or s >= start_spacing - 1e-9]
    for spacing in candidates:
        if holds(extent, size, spacing, BORDER_VOXELS) and holds(clicks, size, spacing, CLICK_BORDER_VOXELS):
            return PromptView(tuple(float(v) for v in centre), spacing)
    widest = candidates[-1]
    if not holds(clicks, size, widest, CLICK_BORDER_VOXELS):
        limit = (size / 2.0 - CLICK_BORDER_VOXELS) * widest
        raise InputError(f"node {prompts.node_id}: a click lies {clicks:.0f} mm from the node's centre, beyond "
                         f"the widest view the model reads ({limit:.0f} mm); check that the click belongs to this "
                         "node, or give the node a box or a line around all of it")
    return PromptView(tuple(float(v) for v in centre), widest)


def patch_prompts(prompts: NodePrompts, view: PromptView, size: int, mask_so_far=None) -> PatchPrompts:
    """The prompts on the view's patch grid. With a line or a box, the seed is a positive click (the
    seed channel marks the patch centre, the anchor)."""
    def index(points):
        return ras_to_patch_index(points, view.centre_ras, view.spacing_mm, size) if len(points) else np.zeros((0, 3))

    positive = [c.ras for c in prompts.clicks if c.positive]
    if prompts.seed is not None and prompts.has_extent:
        positive = [prompts.seed] + positive
    negative = [c.ras for c in prompts.clicks if not c.positive]
    box = None
    if prompts.box is not None:
        corners = index(np.asarray(prompts.box, dtype=float))
        box = np.stack([corners.min(axis=0), corners.max(axis=0)])  # RAS low/high -> patch low/high
    return PatchPrompts(
        positive=index(positive), negative=index(negative),
        line=None if prompts.line is None else index(np.asarray(prompts.line, dtype=float)),
        box=box, mask_so_far=mask_so_far)


RunPatches = Callable[[np.ndarray, float, list], tuple[torch.Tensor, np.ndarray]]


def run_chains(run: RunPatches, prompts: list[NodePrompts], views: list[PromptView], size: int,
               threshold: float, first: list[tuple[torch.Tensor, float] | None]) -> list[tuple[torch.Tensor, float]]:
    """The last step's (patch probability, metastasis logit) of each node's chain.

    run(centres (B, 3), spacing, patch prompts) -> ((B, N, N, N) probabilities, (B,) logits) runs
    one batch of patches of one spacing; `first`: per node, its first step when already computed
    (a seed-started node's zero-click view), else None. Steps run batched over the nodes that have
    them, one spacing at a time."""
    state: list = list(first)
    steps = [len(p.clicks) for p in prompts]
    for step in range(max(steps, default=0) + 1):
        due = [n for n in range(len(prompts)) if (step == 0 and state[n] is None) or (0 < step <= steps[n])]
        for spacing in sorted({views[n].spacing_mm for n in due}):
            group = [n for n in due if views[n].spacing_mm == spacing]
            chain_prompts = []
            for n in group:
                mask_so_far = None if step == 0 else (state[n][0] > threshold).numpy()
                chain_prompts.append(patch_prompts(prompts[n].first_clicks(step), views[n], size, mask_so_far))
            centres = np.array([views[n].centre_ras for n in group])
            probs, logits = run(centres, spacing, chain_prompts)
            for row, n in enumerate(group):
                state[n] = (probs[row], float(logits[row]))
    return state
