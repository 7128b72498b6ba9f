"""One follow-up study: register the follow-up CT to the baseline, carry every baseline node into it
(node_carrying.py), segment the carried nodes and the new ones in one engine pass, and call the
nodal response (core/nodal_response.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..core import nodal_response as recist
from ..core import node_status
from ..core.case import Case, Seed
from ..core.errors import InputError
from ..core.node_result import NodeResult
from .ct_registration import CtRegistration, register_follow_up, sitk_image
from .node_carrying import CarriedNode, carry_nodes, check_found, follow_up_seeds


@dataclass
class NodeChange:
    """One node at both times: `baseline` None for a node new at follow-up."""

    node_id: str
    baseline: NodeResult | None
    follow_up: NodeResult
    carried: CarriedNode | None = None
    target: bool = False

    @property
    def status(self) -> str:
        new = self.baseline is None and not node_status.needs_review(self.follow_up.status)
        return "new" if new else self.follow_up.status

    @property
    def measured(self) -> bool:
        """Whether the follow-up size counts: found (any usable mask but an uncertain registration),
        or not found (size 0)."""
        return self.follow_up.status == node_status.NOT_FOUND or (
            node_status.has_usable_mask(self.follow_up.status)
            and self.follow_up.status != node_status.REGISTRATION_UNCERTAIN)

    def follow_up_short_axis(self) -> float:
        if self.follow_up.status == node_status.NOT_FOUND:
            return 0.0
        return self.follow_up.short_axis_mm if self.measured else math.nan


@dataclass
class FollowUpStudy:
    """What a follow-up run found: per node both time points, the registration and the response."""

    changes: list[NodeChange]
    registration: CtRegistration
    response: recist.NodalResponse
    timings: dict = field(default_factory=dict)

    def follow_up_results(self) -> list[NodeResult]:
        return [c.follow_up for c in self.changes]


def check_new_seeds(baseline_nodes: list[NodeResult], new_seeds: list[Seed]) -> None:
    """A node added at follow-up needs an id of its own: a baseline id would mix two nodes' rows."""
    baseline_ids = {n.node_id for n in baseline_nodes}
    clash = sorted({s.node_id for s in new_seeds} & baseline_ids)
    if clash:
        raise InputError(f"new node id(s) {', '.join(clash)} are baseline nodes' ids; the baseline nodes are "
                         "carried by themselves, so give new nodes other ids")


def run_follow_up(engine, baseline: Case, baseline_nodes: list[NodeResult], follow_up: Case,
                  new_seeds: list[Seed] = (), deformable: bool = True) -> FollowUpStudy:
    """The follow-up study of `baseline_nodes` (read from the baseline's results) in `follow_up`.

    follow_up's own seeds are ignored: the carried nodes' seeds are placed here, and `new_seeds`
    (nodes that appeared) are added to them.
    """
    check_new_seeds(baseline_nodes, list(new_seeds))
    timings = {}
    t0 = time.perf_counter()
    # each CT as SimpleITK reads it, made once: the registration and the node carrying share it
    baseline_image = sitk_image(baseline.image, baseline.geometry)
    follow_up_image = sitk_image(follow_up.image, follow_up.geometry)
    registration = register_follow_up(baseline_image, follow_up_image, deformable)
    timings["registration"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    carried = carry_nodes(baseline, baseline_nodes, follow_up, registration, baseline_image, follow_up_image)
    timings["carry_nodes"] = time.perf_counter() - t0
    seeds = follow_up_seeds(carried) + list(new_seeds)
    by_id = {}
    if seeds:
        case = Case(follow_up.image, follow_up.geometry, seeds, follow_up.metadata)
        case.validate_seeds()
        by_id = {r.node_id: r for r in engine.predict(case)}
    t0 = time.perf_counter()
    changes = []
    for node, item in zip(baseline_nodes, carried):
        result = by_id.get(node.node_id) or _no_mask(node.node_id, item, follow_up)
        if node.node_id in by_id:
            status = check_found(item, result, baseline, node, follow_up)
            _set_status(result, status, drop_mask=item.checks.pop("drop_mask", False))
        item.checks.pop("transform", None)
        changes.append(NodeChange(node.node_id, node, result, item))
    changes += [NodeChange(s.node_id, None, by_id[s.node_id]) for s in new_seeds]
    timings["check_nodes"] = time.perf_counter() - t0
    response = nodal_response_of(changes)
    for c in changes:
        c.target = c.node_id in response.targets
    return FollowUpStudy(changes, registration, response, timings)


def nodal_response_of(changes: list[NodeChange]) -> recist.NodalResponse:
    before = {c.node_id: _baseline_short_axis(c.baseline) for c in changes if c.baseline is not None}
    after = {c.node_id: c.follow_up_short_axis() for c in changes if c.baseline is not None}
    new = {c.node_id: c.follow_up_short_axis() for c in changes if c.baseline is None}
    return recist.nodal_response(before, after, new)


def _baseline_short_axis(node: NodeResult) -> float:
    return node.short_axis_mm if not node.is_empty else math.nan


def _set_status(result: NodeResult, status: str, drop_mask: bool = False) -> None:
    from .node_status_rules import apply_status

    if drop_mask or status == node_status.NOT_FOUND:
        result.extra["mask_voxels_dropped"] = int(result.mask.sum())
        result.mask = np.zeros_like(result.mask)
        result.volume_mm3 = result.short_axis_mm = result.long_axis_mm = 0.0
        result.mean_hu = result.sd_hu = math.nan
        result.probability = result.probability_low = result.probability_high = math.nan
        result.predicted_label = node_status.UNKNOWN_LABEL
    apply_status(result, status)


def _no_mask(node_id: str, item: CarriedNode, follow_up: Case) -> NodeResult:
    """A carried node the engine did not see (mapped outside the follow-up CT)."""
    centre = np.asarray(item.centre_ras if item.centre_ras is not None else (0.0, 0.0, 0.0))
    kji = np.clip(np.round(follow_up.geometry.ras_to_ijk_points(centre)[0][::-1]).astype(int), 0,
                  np.asarray(follow_up.geometry.shape_kji) - 1)
    result = NodeResult(node_id, tuple(float(v) for v in centre), tuple(int(v) for v in kji),
                        tuple(int(v) + 1 for v in kji), np.zeros((1, 1, 1), dtype=bool))
    _set_status(result, item.status)
    return result
