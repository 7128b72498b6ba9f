"""Interactive evaluation: how many clicks a node's mask needs, and how far a line or a box alone gets.

Per node with a true mask, on the CT grid: the zero-click mask (the seed alone), then up to K
clicks simulated by the rule training uses (core/simulated_click.py: at the centre of the largest
error region of the mask shown, positive on a miss, negative on a leak), each refining the mask
the earlier prompts gave, exactly as a radiologist's clicks reach the engine (NodeEngine.refine).
Recorded: Dice after 0..K clicks, NoC@85 and NoC@90 (the clicks needed to reach Dice 0.85 / 0.90,
K + 1 when never), and the Dice of the node started from its RECIST long-axis line alone and from
its bounding box alone (drawn from the true mask).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..core.case import Case
from ..core.errors import InputError
from ..core.node_prompts import Click, NodePrompts, box_from_corners
from ..core.simulated_click import error_region_click
from ..core.mask_dice import dice_score

NOC_TARGETS = (0.85, 0.90)


@dataclass
class InteractiveScore:
    """One node's interactive figures (NaN where a prompt could not be placed)."""

    dice_by_clicks: list[float] = field(default_factory=list)  # after 0, 1, ..., K clicks
    line_dice: float = float("nan")
    box_dice: float = float("nan")
    refused_clicks: int = 0  # clicks the engine refused (beyond the widest view, on the seed)

    def clicks_to_reach(self, target: float) -> int:
        """NoC: the first click count whose Dice reaches `target`; K + 1 when none does."""
        for k, d in enumerate(self.dice_by_clicks):
            if d >= target:
                return k
        return len(self.dice_by_clicks)


def score_interactively(engine, case: Case, node_id: str, seed_ras, truth: np.ndarray, zero_click_mask: np.ndarray,
                        clicks: int, long_axis_ras: np.ndarray | None) -> InteractiveScore:
    """One node of `case` (its seed among the case's) against its true mask (CT grid, bool);
    zero_click_mask: the mask predict gave it; long_axis_ras: (2, 3) ends of the true mask's
    RECIST long axis (None: no line prompt)."""
    geometry = case.geometry
    spacing_kji = geometry.spacing[::-1]
    score = InteractiveScore([dice_score(zero_click_mask, truth)])
    prompts = NodePrompts(node_id, seed=tuple(float(v) for v in seed_ras))
    shown = zero_click_mask
    for _ in range(clicks):
        click = error_region_click(shown, truth, spacing_kji)
        if click is None:  # nothing left to correct
            score.dice_by_clicks.append(score.dice_by_clicks[-1])
            continue
        ras = geometry.ijk_to_ras_points(np.asarray(click.index[::-1], dtype=float))[0]
        attempt = prompts.with_click(Click(tuple(float(v) for v in ras), click.positive))
        try:
            result = engine.refine(case, attempt)
        except InputError:
            score.refused_clicks += 1
            score.dice_by_clicks.append(score.dice_by_clicks[-1])
            continue
        prompts, shown = attempt, result.full_mask(geometry.shape_kji)
        score.dice_by_clicks.append(dice_score(shown, truth))
    if long_axis_ras is not None:
        line = tuple(tuple(float(v) for v in end) for end in np.asarray(long_axis_ras))
        score.line_dice = _dice_from_prompt_alone(engine, case, NodePrompts(node_id, line=line), truth)
    idx = np.argwhere(truth)
    corners = geometry.ijk_to_ras_points(np.array([[a, b, c] for a in (idx[:, 2].min() - 0.5, idx[:, 2].max() + 0.5)
                                                   for b in (idx[:, 1].min() - 0.5, idx[:, 1].max() + 0.5)
                                                   for c in (idx[:, 0].min() - 0.5, idx[:, 0].max() + 0.5)]))
    box = box_from_corners(corners.min(axis=0), corners.max(axis=0))
    score.box_dice = _dice_from_prompt_alone(engine, case, NodePrompts(node_id, box=box), truth)
    return score


def _dice_from_prompt_alone(engine, case: Case, prompts: NodePrompts, truth: np.ndarray) -> float:
    try:
        result = engine.refine(case, prompts)
    except InputError:
        return float("nan")
    return dice_score(result.full_mask(case.geometry.shape_kji), truth)


def summarise_interactive(scores: list[InteractiveScore]) -> dict:
    """Mean Dice after each click count, mean NoC@85/90, the line and box Dice; {} without scores."""
    scores = [s for s in scores if s.dice_by_clicks]
    if not scores:
        return {}
    curve = np.array([s.dice_by_clicks for s in scores])
    out = {"nodes": len(scores), "dice_after_clicks": [float(v) for v in curve.mean(axis=0)]}
    for target in NOC_TARGETS:
        noc = np.array([s.clicks_to_reach(target) for s in scores])
        out[f"noc{round(target * 100)}"] = float(noc.mean())
        out[f"reached_{round(target * 100)}"] = float((noc < curve.shape[1]).mean())
    for name in ("line_dice", "box_dice"):
        values = np.array([getattr(s, name) for s in scores])
        values = values[~np.isnan(values)]
        out[name] = float(values.mean()) if len(values) else math.nan
        out[f"{name}_p10"] = float(np.percentile(values, 10)) if len(values) else math.nan
    out["refused_clicks"] = int(sum(s.refused_clicks for s in scores))
    return out
