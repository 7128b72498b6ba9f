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

from collections import OrderedDict
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
StepResult = tuple[torch.Tensor, float]  # a step's (N, N, N) patch probability and metastasis logit


class StepMemo:
    """What was computed on one CT, least recently used forgotten first: the chain steps by
    (prompts so far, view), the zero-click views of seed-started nodes by seed, the metastasis
    head's features by view. A chain that grows by one click (the next request of a radiologist
    clicking on) runs only its new step. What is remembered depends on the CT and its key alone, so
    it is exactly what computing it again would give."""

    def __init__(self, capacity: int = 128):
        self.capacity = capacity
        self._owner = None  # (the CT array, its voxel-to-RAS matrix) the entries were computed on
        self._steps: OrderedDict = OrderedDict()

    def on(self, image, geometry) -> "StepMemo":
        """This memo for the CT `image` on `geometry`: forgets everything computed on another CT
        (another array, or the same array placed elsewhere)."""
        owner = self._owner
        if owner is None or owner[0] is not image or not np.array_equal(owner[1], geometry.ijk_to_ras):
            self._owner, self._steps = (image, np.array(geometry.ijk_to_ras)), OrderedDict()
        return self

    def clear(self) -> None:
        self._owner, self._steps = None, OrderedDict()

    def get(self, *key):
        """What was remembered under `key` (prompts so far and view; or a seed), else None."""
        if key in self._steps:
            self._steps.move_to_end(key)
            return self._steps[key]
        return None

    def put(self, value, *key) -> None:
        self._steps[key] = value
        while len(self._steps) > self.capacity:
            self._steps.popitem(last=False)


def run_chains(run: RunPatches, prompts: list[NodePrompts], views: list[PromptView], size: int,
               threshold: float, first: list[StepResult | None], memo: StepMemo) -> list[StepResult]:
    """The last step's (patch probability, metastasis logit) of each node's chain.

    run(centres (1, 3), spacing, [patch prompts]) -> ((1, N, N, N) probabilities, (1,) logits) runs
    one patch; each step runs alone, so a chain gives the same numbers however many nodes a request
    holds. `first`: per node, its first step when already computed (a seed-started node's zero-click
    view), else None. Steps found in `memo` are not run again; the steps run are added to it."""
    out = []
    for node, view, start in zip(prompts, views, first):
        state = start
        for step in range(0 if start is None else 1, len(node.clicks) + 1):
            so_far = node.first_clicks(step)
            known = memo.get(so_far, view)
            if known is None:
                mask_so_far = None if step == 0 else (state[0] > threshold).numpy()
                probs, logits = run(np.array([view.centre_ras]), view.spacing_mm,
                                    [patch_prompts(so_far, view, size, mask_so_far)])
                known = (probs[0], float(logits[0]))
                memo.put(known, so_far, view)
            state = known
        out.append(state)
    return out
