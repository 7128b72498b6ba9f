"""Prompts files: every key optional, RAS or LPS as the file says, bad prompts refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from LymphNodeMTLLib.core.errors import InputError
from LymphNodeMTLLib.core.geometry import VolumeGeometry
from LymphNodeMTLLib.core.node_prompts import Click, NodePrompts
from LymphNodeMTLLib.io.prompt_reader import read_prompts

GEOMETRY = VolumeGeometry(np.diag([0.8, 0.8, 2.5, 1.0]) @ np.eye(4), (40, 100, 100))  # 0..79 x 0..79 x 0..97.5 mm


def _write(tmp_path, document) -> str:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(document))
    return path


def test_every_key_is_read_in_ras_and_clicks_keep_their_order(tmp_path):
    got = read_prompts(_write(tmp_path, {"coordinate_system": "RAS", "nodes": {
        "N01": {"seed": [40, 40, 50], "line": [[30, 40, 50], [50, 40, 50]], "box": [[30, 30, 40], [50, 50, 60]],
                "clicks": [{"point": [41, 40, 50], "positive": True}, {"point": [60, 40, 50], "positive": False}]},
        "N02": {"line": [[10, 10, 20], [20, 10, 20]]}}}))
    n1 = got["N01"]
    assert n1.seed == (40.0, 40.0, 50.0) and n1.line == ((30.0, 40.0, 50.0), (50.0, 40.0, 50.0))
    assert n1.box == ((30.0, 30.0, 40.0), (50.0, 50.0, 60.0))
    assert n1.clicks == (Click((41.0, 40.0, 50.0), True), Click((60.0, 40.0, 50.0), False))
    assert got["N02"].seed is None and got["N02"].anchor.tolist() == [15.0, 10.0, 20.0]


def test_lps_files_are_turned_into_ras_and_their_box_normalised(tmp_path):
    got = read_prompts(_write(tmp_path, {"coordinate_system": "LPS", "nodes": {
        "A": {"seed": [-40, -40, 50], "box": [[-50, -50, 40], [-30, -30, 60]],
              "clicks": [{"point": [-41, -40, 50], "positive": True}]}}}))["A"]
    assert got.seed == (40.0, 40.0, 50.0)
    assert got.box == ((30.0, 30.0, 40.0), (50.0, 50.0, 60.0))  # low and high in RAS
    assert got.clicks[0].ras == (41.0, 40.0, 50.0)


@pytest.mark.parametrize("document, message", [
    ({"nodes": {"A": {"seed": [1, 2, 3]}}}, "coordinate_system"),
    ({"coordinate_system": "XYZ", "nodes": {"A": {}}}, "coordinate_system"),
    ({"coordinate_system": "RAS", "nodes": {}}, "lists no nodes"),
    ({"coordinate_system": "RAS", "nodes": {"A": {"seed": [1, 2]}}}, "seed must be"),
    ({"coordinate_system": "RAS", "nodes": {"A": {"line": [[1, 2, 3]]}}}, "line must be"),
    ({"coordinate_system": "RAS", "nodes": {"A": {"box": [[5, 5, 5], [1, 9, 9]]}}}, "inverted"),
    ({"coordinate_system": "RAS", "nodes": {"A": {"clicks": [{"point": [1, 2, 3]}]}}}, "click 1"),
    ({"coordinate_system": "RAS", "nodes": {"A": {"seed": [1, 2, 3], "colour": "red"}}}, "unknown key"),
    ({"coordinate_system": "RAS", "nodes": {"A": {"seed": [1, "x", 3]}}}, "seed must be"),
    ({"coordinate_system": "RAS", "nodes": {"A": {"seed": [1, 2, 3]}}, "units": "cm"}, "unknown key"),
    ({"coordinate_system": "RAS", "nodes": {"A": {"clicks": [{"point": [1, 2, 3], "positive": True}] * 101}}},
     "at most 100"),
])
def test_malformed_prompts_are_refused_in_one_line(tmp_path, document, message):
    with pytest.raises(InputError, match=message) as e:
        read_prompts(_write(tmp_path, document))
    assert "\n" not in str(e.value)


def test_a_file_that_is_not_json_is_refused(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{nodes: ")
    with pytest.raises(InputError, match="not valid JSON"):
        read_prompts(path)


@pytest.mark.parametrize("prompts, message", [
    (NodePrompts("A"), "no seed, line or box"),
    (NodePrompts("A", seed=(40.0, 40.0, 500.0)), "outside the CT"),
    (NodePrompts("A", clicks=(Click((40.0, 40.0, 50.0), True),), line=((30.0, 40.0, 50.0), (30.0, 40.0, 50.0))),
     "zero length"),
    (NodePrompts("A", box=((30.0, 30.0, 40.0), (50.0, 50.0, 41.0))), "thinner than a voxel"),
    (NodePrompts("A", box=((30.0, 30.0, 40.0), (30.5, 50.0, 60.0))), "thinner than a voxel"),
    (NodePrompts("A", seed=(40.0, 40.0, 50.0), clicks=(Click((40.1, 40.0, 50.0), False),)), "negative click lies on its seed"),
    (NodePrompts("A", seed=(40.0, 40.0, 50.0), clicks=(Click((40.0, 40.0, -20.0), True),)), "outside the CT"),
])
def test_prompts_the_engine_cannot_follow_are_refused(prompts, message):
    with pytest.raises(InputError, match=message) as e:
        prompts.validate(GEOMETRY)
    assert prompts.node_id in str(e.value) and "\n" not in str(e.value)


def test_good_prompts_pass():
    NodePrompts("A", seed=(40.0, 40.0, 50.0), line=((30.0, 40.0, 50.0), (50.0, 40.0, 50.0)),
                box=((30.0, 30.0, 40.0), (50.0, 50.0, 60.0)),
                clicks=(Click((45.0, 40.0, 50.0), False),)).validate(GEOMETRY)


@pytest.mark.parametrize("system", ["RAS", "LPS"])
def test_a_written_document_reads_back_as_the_same_prompts(tmp_path, system):
    from LymphNodeMTLLib.io.prompt_reader import prompts_document

    given = [NodePrompts("A", seed=(40.0, 40.0, 50.0), line=((30.0, 40.0, 50.0), (50.0, 41.0, 50.0)),
                         box=((30.0, 31.0, 40.0), (50.0, 52.0, 60.0)),
                         clicks=(Click((45.0, 40.0, 50.0), False), Click((41.0, 40.0, 52.0), True))),
             NodePrompts("B", line=((10.0, 10.0, 20.0), (20.0, 12.0, 20.0)))]
    document = prompts_document(given, system)
    assert document["coordinate_system"] == system
    got = read_prompts(_write(tmp_path, document))
    assert got == {p.node_id: p for p in given}


def test_a_node_given_twice_is_refused(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"coordinate_system": "RAS", "nodes": {"A": {"seed": [1, 2, 3]}, "A": {"seed": [4, 5, 6]}}}')
    with pytest.raises(InputError, match="A more than once"):
        read_prompts(path)


def test_nan_coordinates_are_refused(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"coordinate_system": "RAS", "nodes": {"A": {"seed": [NaN, 2, 3]}}}')
    with pytest.raises(InputError, match="seed must be"):
        read_prompts(path)
