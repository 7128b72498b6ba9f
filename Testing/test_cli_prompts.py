"""predict --prompts end to end: a node segmented from its line, clicks refining a seeded node, a
node from prompts alone, and every bad prompt refused with one line, exit 2 and nothing written."""

import csv
import json

import numpy as np
import pytest
from geometry_cases import SPHERE_CENTRE_RAS, SPHERE_RADIUS_MM, other_lattice_encodings, sphere_volume
from LymphNodeMTLLib.commands.cli import main
from LymphNodeMTLLib.core.case import Seed
from LymphNodeMTLLib.io.seed_reader import write_markups_json
from LymphNodeMTLLib.io.volume_reader import write_volume
from LymphNodeMTLLib.outputs.segmentation_writer import read_segmentation

CENTRE = [float(v) for v in SPHERE_CENTRE_RAS]


@pytest.fixture
def ct_and_seeds(tmp_path):
    """An oblique CT with a sphere 'node' and a seed on it."""
    geometry = other_lattice_encodings()["oblique"]
    image, _ = sphere_volume(geometry)
    image = image + np.random.default_rng(0).normal(0, 10, image.shape).astype(np.float32)
    image[:, :, :3] = -1000.0
    ct = tmp_path / "ct.nrrd"
    write_volume(ct, image, geometry)
    seeds = tmp_path / "seeds.mrk.json"
    write_markups_json(seeds, [Seed("4R", tuple(SPHERE_CENTRE_RAS))])
    return ct, seeds


def _prompts(tmp_path, nodes, system="RAS"):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"coordinate_system": system, "nodes": nodes}))
    return path


def _run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _line(offset=0.0):
    return [[CENTRE[0] - SPHERE_RADIUS_MM, CENTRE[1] + offset, CENTRE[2]],
            [CENTRE[0] + SPHERE_RADIUS_MM, CENTRE[1] + offset, CENTRE[2]]]


def test_prompts_refine_seeded_nodes_and_add_nodes_of_their_own(ct_and_seeds, tmp_path, capsys):
    ct, seeds = ct_and_seeds
    prompts = _prompts(tmp_path, {
        "4R": {"clicks": [{"point": [CENTRE[0] + 3.0, CENTRE[1], CENTRE[2]], "positive": True}]},
        "line-only": {"line": _line(6.0)}})
    out = tmp_path / "out"
    code, stdout, err = _run(["predict", "--volume", ct, "--seeds", seeds, "--prompts", prompts, "--out", out,
                              "--device", "cpu"], capsys)
    assert code == 0, err
    with open(out / "nodes.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"4R", "line-only"}
    assert float(rows["line-only"]["seed_a"]) == pytest.approx(CENTRE[1] + 6.0)  # its seed: the line's middle
    assert float(rows["4R"]["volume_mm3"]) > 0
    record = json.loads((out / "run.json").read_text())
    assert record["inputs"]["prompts"] == str(prompts)
    _, _, segments = read_segmentation(out / "nodes.seg.nrrd")
    assert [seg["name"] for seg in segments] == ["LN 4R", "LN line-only"]


def test_prompts_alone_need_no_seeds_file(ct_and_seeds, tmp_path, capsys):
    ct, _ = ct_and_seeds
    prompts = _prompts(tmp_path, {"A": {"box": [[c - 9.0 for c in CENTRE], [c + 9.0 for c in CENTRE]]}})
    out = tmp_path / "out"
    code, _, err = _run(["predict", "--volume", ct, "--prompts", prompts, "--out", out, "--device", "cpu"], capsys)
    assert code == 0, err
    assert (out / "nodes.csv").read_text().count("\n") == 2


BAD = {
    "outside the CT": {"4R": {"clicks": [{"point": [CENTRE[0], CENTRE[1], CENTRE[2] + 400.0], "positive": True}]}},
    "zero length": {"L": {"line": [[CENTRE[0] + 12.0, CENTRE[1], CENTRE[2]]] * 2}},
    "inverted": {"B": {"box": [[c + 5.0 for c in CENTRE], [c - 5.0 for c in CENTRE]]}},
    "thinner than a voxel": {"B": {"box": [[c - 5.0 for c in CENTRE], [CENTRE[0] + 5.0, CENTRE[1] + 5.0, CENTRE[2] - 4.7]]}},
    "negative click lies on its seed": {"4R": {"clicks": [{"point": CENTRE, "positive": False}]}},
    "no seed, line or box": {"lonely": {"clicks": [{"point": CENTRE, "positive": True}]}},
    "another in the prompts file": {"4R": {"seed": [CENTRE[0] + 2.0, CENTRE[1], CENTRE[2]]}},
}


@pytest.mark.parametrize("words", sorted(BAD))
def test_bad_prompts_are_refused_in_one_line_and_nothing_is_written(ct_and_seeds, tmp_path, capsys, words):
    ct, seeds = ct_and_seeds
    out = tmp_path / "out"
    code, _, err = _run(["predict", "--volume", ct, "--seeds", seeds, "--prompts", _prompts(tmp_path, BAD[words]),
                         "--out", out, "--device", "cpu"], capsys)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and words in lines[0], err
    assert not out.exists() or not any(out.iterdir())


def test_neither_seeds_nor_prompts_is_refused(ct_and_seeds, tmp_path, capsys):
    ct, _ = ct_and_seeds
    code, _, err = _run(["predict", "--volume", ct, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "--seeds, --prompts or both" in err
