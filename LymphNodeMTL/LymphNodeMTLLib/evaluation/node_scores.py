"""What evaluation records per node, and the two plain files it is written to.

`NodeScore` is one node's prediction beside its truth; predictions.csv holds one row per score and
report.json a summary with NaN written as null. The scorer (evaluator.py) fills scores and the
report (report.py) writes them; both import from here, so data flows one way:
node_scores <- report <- evaluator.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .interactive_scoring import NOC_TARGETS, InteractiveScore

# The clinical size rule every report sets beside the model: metastatic when the short axis is at
# least this long.
SHORT_AXIS_RULE_MM = 10.0


@dataclass
class NodeScore:
    case_id: str
    node_id: str
    label: int | None
    probability: float
    short_axis_mm: float
    true_short_axis_mm: float = float("nan")
    dice: float = float("nan")
    hd95_mm: float = float("nan")
    true_probability: float = float("nan")
    slice_mm: float = float("nan")  # the source CT's coarsest voxel spacing (its slice spacing)
    contact_fraction: float = float("nan")  # share of the outer surface on similar-attenuation tissue
    empty_mask: bool = False  # the model gave this node no mask voxel
    interactive: InteractiveScore | None = None  # clicks, line and box (evaluate --interactive K)
    extra: dict = field(default_factory=dict)


def write_predictions_csv(path: Path, scores: list[NodeScore]) -> None:
    columns = ["case_id", "node_id", "label", "probability", "short_axis_mm", "true_short_axis_mm",
               "dice", "hd95_mm", "true_probability", "slice_mm", "contact_fraction", "empty_mask"]
    clicks = max((len(s.interactive.dice_by_clicks) for s in scores if s.interactive), default=0)
    if clicks:  # an interactive evaluation: Dice after each click count, NoC, line and box Dice
        columns += [f"dice_after_{k}_clicks" for k in range(clicks)]
        columns += [f"noc{round(t * 100)}" for t in NOC_TARGETS] + ["line_dice", "box_dice"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for s in scores:
            row = [s.case_id, s.node_id, "" if s.label is None else s.label, f"{s.probability:.4f}",
                   f"{s.short_axis_mm:.2f}", f"{s.true_short_axis_mm:.2f}", f"{s.dice:.4f}",
                   f"{s.hd95_mm:.2f}", f"{s.true_probability:.4f}", f"{s.slice_mm:.2f}",
                   f"{s.contact_fraction:.3f}", int(s.empty_mask)]
            if clicks:
                i = s.interactive
                row += ([f"{d:.4f}" for d in i.dice_by_clicks] + [i.clicks_to_reach(t) for t in NOC_TARGETS]
                        + [f"{i.line_dice:.4f}", f"{i.box_dice:.4f}"]) if i else [""] * (clicks + 4)
            w.writerow(row)


def summary_json(summary: dict) -> str:
    """The summary as JSON text, NaN (not valid JSON) as null."""
    def clean(v):
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, (tuple, list)):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    return json.dumps(clean(summary), indent=2) + "\n"
