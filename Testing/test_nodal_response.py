"""RECIST 1.1 nodal response from short axes: each rule at and around its threshold."""

import math

from LymphNodeMTLLib.core import nodal_response as recist
from LymphNodeMTLLib.core import node_status
from LymphNodeMTLLib.core.nodal_response import nodal_response

BASELINE = {"a": 20.0, "b": 16.0, "small": 8.0}  # targets a and b: sum 36 mm


def _category(after, new=None, baseline=BASELINE):
    return nodal_response(baseline, after, new).category


def test_targets_are_the_nodes_from_15_mm_largest_first_at_most_five():
    sizes = {f"n{k}": 15.0 + k for k in range(7)} | {"below": 14.9}
    assert recist.target_nodes(sizes) == ["n6", "n5", "n4", "n3", "n2"]
    assert nodal_response(BASELINE, {"a": 20.0, "b": 16.0, "small": 8.0}).baseline_sum_mm == 36.0


def test_partial_response_from_a_30_percent_fall_of_the_sum():
    assert _category({"a": 14.0, "b": 11.3, "small": 8.0}) == recist.STABLE_DISEASE  # -29.7 %: not yet
    assert _category({"a": 14.0, "b": 11.1, "small": 8.0}) == recist.PARTIAL_RESPONSE  # -30.3 %


def test_progression_needs_20_percent_and_5_mm():
    assert _category({"a": 26.0, "b": 17.3, "small": 8.0}) == recist.PROGRESSIVE_DISEASE  # +20.3 %, +7.3 mm
    assert _category({"a": 26.0, "b": 16.0, "small": 8.0}) == recist.STABLE_DISEASE  # +16.7 %
    small = {"a": 15.0}
    assert nodal_response(small, {"a": 19.0}).category == recist.STABLE_DISEASE  # +27 % but only 4 mm
    assert nodal_response(small, {"a": 20.0}).category == recist.PROGRESSIVE_DISEASE


def test_complete_response_when_every_target_and_pathological_node_is_below_10_mm():
    assert _category({"a": 9.9, "b": 0.0, "small": 8.0}) == recist.COMPLETE_RESPONSE
    assert _category({"a": 10.0, "b": 0.0, "small": 8.0}) == recist.PARTIAL_RESPONSE
    with_non_target = BASELINE | {"nt": 12.0}
    assert _category({"a": 5.0, "b": 5.0, "small": 8.0, "nt": 11.0}, baseline=with_non_target) == \
        recist.PARTIAL_RESPONSE  # targets gone, a non-target persists
    assert _category({"a": 5.0, "b": 5.0, "small": 8.0, "nt": 9.0}, baseline=with_non_target) == \
        recist.COMPLETE_RESPONSE


def test_a_new_pathological_node_is_progression_a_small_one_is_not():
    stable = {"a": 20.0, "b": 16.0, "small": 8.0}
    assert _category(stable, {"x": 10.0}) == recist.PROGRESSIVE_DISEASE
    response = nodal_response(BASELINE, stable, {"x": 9.9})
    assert response.category == recist.STABLE_DISEASE and response.new_pathological == []


def test_a_target_without_a_follow_up_size_makes_the_response_not_evaluable():
    response = nodal_response(BASELINE, {"a": math.nan, "b": 16.0, "small": 8.0})
    assert response.category == recist.NOT_EVALUABLE and response.not_measured == ["a"]
    assert math.isnan(response.follow_up_sum_mm)
    assert _category({"a": math.nan, "b": 16.0}, {"x": 15.0}) == recist.PROGRESSIVE_DISEASE


def test_without_target_nodes():
    assert nodal_response({"s": 8.0}, {"s": 7.0}).category == recist.NO_NODAL_DISEASE
    assert nodal_response({"nt": 12.0}, {"nt": 12.0}).category == recist.NON_CR_NON_PD
    assert nodal_response({"nt": 12.0}, {"nt": 9.0}).category == recist.COMPLETE_RESPONSE
    as_dict = nodal_response(BASELINE, {"a": 20.0, "b": 16.0, "small": 8.0}).as_dict()
    assert as_dict["note"] == recist.SUGGESTION and as_dict["category"] == recist.STABLE_DISEASE


# --- the response from a follow-up table's rows (outputs/follow_up_table.py), as the Slicer table keeps it
def _row(node_id, before, after, status="ok"):
    from LymphNodeMTLLib.outputs.follow_up_table import with_changes

    row = {"id": node_id, "status": status, "baseline_short_axis_mm": before, "baseline_long_axis_mm": before + 5,
           "baseline_volume_mm3": 1000.0, "follow_up_short_axis_mm": after,
           "follow_up_long_axis_mm": None if after is None else after + 5, "follow_up_volume_mm3": 500.0}
    return with_changes(row, status != node_status.REGISTRATION_UNCERTAIN)  # as NodeChange.measured


def test_a_remeasured_row_replaces_only_the_follow_up_time_point_and_the_response_follows_it():
    import types

    from LymphNodeMTLLib.outputs.follow_up_table import remeasured_row, response_of_rows

    rows = [_row("1", 20.0, 18.0), _row("2", 16.0, 15.0), _row("3", 8.0, None, "registration_uncertain")]
    assert rows[0]["short_axis_change_mm"] == -2.0 and rows[2]["short_axis_change_mm"] is None
    assert response_of_rows(rows).category == recist.STABLE_DISEASE
    corrected = types.SimpleNamespace(status="ok", is_empty=False, short_axis_mm=9.0, long_axis_mm=12.0,
                                      volume_mm3=300.0, probability=0.2)
    rows[0] = remeasured_row(rows[0], corrected)
    assert (rows[0]["baseline_short_axis_mm"], rows[0]["follow_up_short_axis_mm"]) == (20.0, 9.0)
    assert rows[0]["short_axis_change_mm"] == -11.0 and rows[0]["volume_change_percent"] == -70.0
    response = response_of_rows(rows)  # (9 + 15) / 36: -33 %
    assert response.category == recist.PARTIAL_RESPONSE and response.follow_up_sum_mm == 24.0
    rows[1] = remeasured_row(rows[1], None)  # erased: not found, size 0
    assert rows[1]["status"] == "not_found" and rows[1]["follow_up_short_axis_mm"] == 0.0
    assert response_of_rows(rows).follow_up_sum_mm == 9.0
