"""RECIST 1.1 response of the lymph nodes between a baseline and a follow-up CT.

The rules, for nodes only (short axes in mm):
- a node is pathological from 10 mm short axis; a target node from 15 mm at baseline (at most
  MAX_TARGETS, the largest; RECIST's limit of two per organ needs the nodal stations, which only
  the reader knows, so the reader may narrow the list);
- the sum is the sum of the target nodes' short axes; a target node not found at follow-up counts 0;
- complete response: every target node below 10 mm, every baseline pathological node too, and no
  new pathological node;
- progression: the sum rises by 20 % and by at least 5 mm over the baseline (the nadir of a
  two-time-point study), or a new pathological node appears;
- partial response: the sum falls by 30 % (also when the target nodes are all below 10 mm while a
  non-target node is not, RECIST's "CR in target, non-CR in non-target");
- stable disease otherwise;
- not evaluable when a target node could not be measured at follow-up (and no new node already
  makes it progression).
Unequivocal progression of non-target nodes is a reader's judgement and is not called here. The
category is a suggestion for the radiologist to confirm, never a finding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

PATHOLOGICAL_MM = 10.0
TARGET_MM = 15.0
MAX_TARGETS = 5
PARTIAL_RESPONSE_FALL = 0.30
PROGRESSION_RISE = 0.20
PROGRESSION_RISE_MM = 5.0

COMPLETE_RESPONSE = "complete_response"
PARTIAL_RESPONSE = "partial_response"
STABLE_DISEASE = "stable_disease"
PROGRESSIVE_DISEASE = "progressive_disease"
NOT_EVALUABLE = "not_evaluable"
NON_CR_NON_PD = "non_cr_non_pd"  # no target node: the non-target nodes persist
NO_NODAL_DISEASE = "no_nodal_disease"  # no pathological node at either time
CATEGORIES = (COMPLETE_RESPONSE, PARTIAL_RESPONSE, STABLE_DISEASE, PROGRESSIVE_DISEASE, NOT_EVALUABLE,
              NON_CR_NON_PD, NO_NODAL_DISEASE)
SUGGESTION = "suggested RECIST 1.1 nodal response, for the radiologist to confirm"


@dataclass
class NodalResponse:
    """The case's nodal response (module doc) and the figures it rests on."""

    category: str
    reason: str
    targets: list[str] = field(default_factory=list)
    non_targets: list[str] = field(default_factory=list)  # pathological at baseline, not targets
    new_pathological: list[str] = field(default_factory=list)
    not_measured: list[str] = field(default_factory=list)  # target nodes without a follow-up size
    baseline_sum_mm: float = 0.0
    follow_up_sum_mm: float = math.nan
    change_mm: float = math.nan
    change_percent: float = math.nan

    def as_dict(self) -> dict:
        return {"category": self.category, "note": SUGGESTION, "reason": self.reason,
                "target_nodes": self.targets, "non_target_nodes": self.non_targets,
                "new_pathological_nodes": self.new_pathological, "target_nodes_not_measured": self.not_measured,
                "baseline_sum_mm": _rounded(self.baseline_sum_mm), "follow_up_sum_mm": _rounded(self.follow_up_sum_mm),
                "change_mm": _rounded(self.change_mm), "change_percent": _rounded(self.change_percent)}


def _rounded(value: float):
    return None if not math.isfinite(value) else round(float(value), 2)


def target_nodes(baseline_short_axes: dict[str, float]) -> list[str]:
    """The target nodes: short axis >= 15 mm at baseline, the largest MAX_TARGETS (ties in given order)."""
    eligible = [(k, v) for k, v in baseline_short_axes.items() if math.isfinite(v) and v >= TARGET_MM]
    eligible.sort(key=lambda kv: -kv[1])
    return [k for k, _ in eligible[:MAX_TARGETS]]


def nodal_response(baseline_short_axes: dict[str, float], follow_up_short_axes: dict[str, float],
                   new_short_axes: dict[str, float] | None = None) -> NodalResponse:
    """The response (module doc) from short axes in mm.

    Args:
        baseline_short_axes: every baseline node's short axis.
        follow_up_short_axes: the same nodes at follow-up: 0 for a node not found there, NaN for one
            that could not be measured (the registration is uncertain there).
        new_short_axes: nodes added at follow-up (NaN: not measured).
    """
    new = {k: v for k, v in (new_short_axes or {}).items() if math.isfinite(v) and v >= PATHOLOGICAL_MM}
    targets = target_nodes(baseline_short_axes)
    non_targets = [k for k, v in baseline_short_axes.items()
                   if k not in targets and math.isfinite(v) and v >= PATHOLOGICAL_MM]
    after = {k: follow_up_short_axes.get(k, math.nan) for k in baseline_short_axes}
    not_measured = [k for k in targets if not math.isfinite(after[k])]
    response = NodalResponse(NOT_EVALUABLE, "", targets, non_targets, sorted(new), not_measured,
                             baseline_sum_mm=sum(baseline_short_axes[k] for k in targets))
    if not not_measured and targets:
        response.follow_up_sum_mm = sum(after[k] for k in targets)
        response.change_mm = response.follow_up_sum_mm - response.baseline_sum_mm
        response.change_percent = 100.0 * response.change_mm / response.baseline_sum_mm
    response.category, response.reason = _category(response, after)
    return response


def _category(r: NodalResponse, after: dict[str, float]) -> tuple[str, str]:
    if r.new_pathological:
        return PROGRESSIVE_DISEASE, (f"new pathological node(s) {', '.join(r.new_pathological)} "
                                     f"(short axis >= {PATHOLOGICAL_MM:.0f} mm)")
    if r.not_measured:
        return NOT_EVALUABLE, f"target node(s) {', '.join(r.not_measured)} could not be measured at follow-up"
    non_target_left = [k for k in r.non_targets if not (math.isfinite(after[k]) and after[k] < PATHOLOGICAL_MM)]
    if not r.targets:
        if not r.non_targets:
            return NO_NODAL_DISEASE, "no pathological node (short axis >= 10 mm) at baseline or new"
        if not non_target_left:
            return COMPLETE_RESPONSE, "every pathological node below 10 mm short axis"
        return NON_CR_NON_PD, "no target node; non-target node(s) " + ", ".join(non_target_left) + " persist"
    if r.change_percent >= 100.0 * PROGRESSION_RISE and r.change_mm >= PROGRESSION_RISE_MM:
        return PROGRESSIVE_DISEASE, (f"target sum rose {r.change_percent:.0f} % ({r.change_mm:+.1f} mm): "
                                     f">= {100 * PROGRESSION_RISE:.0f} % and >= {PROGRESSION_RISE_MM:.0f} mm")
    if all(after[k] < PATHOLOGICAL_MM for k in r.targets):
        if not non_target_left:
            return COMPLETE_RESPONSE, "every target and pathological node below 10 mm short axis"
        return PARTIAL_RESPONSE, ("every target node below 10 mm, non-target node(s) "
                                  + ", ".join(non_target_left) + " not")
    if r.change_percent <= -100.0 * PARTIAL_RESPONSE_FALL:
        return PARTIAL_RESPONSE, f"target sum fell {-r.change_percent:.0f} % (>= {100 * PARTIAL_RESPONSE_FALL:.0f} %)"
    return STABLE_DISEASE, f"target sum changed {r.change_percent:+.0f} % ({r.change_mm:+.1f} mm)"
