"""Small cohorts for tests: a manifest of tiny sphere CTs (a second or less each through predict on
a CPU), some of them bad on purpose, each in a way predict refuses for that case alone."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from geometry_cases import SPHERE_CENTRE_RAS, other_lattice_encodings, sphere_volume
from LymphNodeMTLLib.commands.cli import main
from LymphNodeMTLLib.core.case import Seed
from LymphNodeMTLLib.io.seed_reader import write_markups_json
from LymphNodeMTLLib.io.volume_reader import write_volume

# what makes a case bad, and a fragment of the one-line reason predict gives for it
BAD_CASES = {
    "truncated": "incomplete",           # an interrupted copy of the CT
    "seed_outside": "outside the CT",    # a seed 30 cm away from the scanned volume
}


def write_cohort(folder, n_cases: int, bad: dict[int, str] | None = None, seed: int = 0) -> Path:
    """Write `n_cases` sphere cases under folder/inputs and their manifest folder/manifest.csv
    (paths relative to it). bad: case index -> a key of BAD_CASES. Returns the manifest path."""
    folder = Path(folder)
    inputs = folder / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    bad = bad or {}
    geometry = other_lattice_encodings()["oblique"]
    clean, _ = sphere_volume(geometry)
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n_cases):
        case_id = f"case{index:02d}"
        image = clean + rng.normal(0, 10, clean.shape).astype(np.float32)
        image[:, :, :3] = -1000.0  # air at one edge: a CT shows air, fat and soft tissue
        ct = inputs / f"{case_id}.nrrd"
        write_volume(ct, image, geometry)
        centre = SPHERE_CENTRE_RAS + rng.uniform(-1.0, 1.0, 3)  # each case's seed a little apart
        seeds = [Seed("1", tuple(centre))]
        if bad.get(index) == "seed_outside":
            seeds.append(Seed("2", tuple(centre + [0.0, 0.0, 300.0])))
        if bad.get(index) == "truncated":
            data = ct.read_bytes()
            ct.write_bytes(data[: len(data) // 2])
        markups = inputs / f"{case_id}.mrk.json"
        write_markups_json(markups, seeds)
        rows.append({"case_id": case_id, "volume": f"inputs/{ct.name}", "seeds": f"inputs/{markups.name}"})
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["case_id", "volume", "seeds"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def assert_refused_in_one_line(argv: list[str], capsys, fragment: str, results: Path) -> None:
    """The command line `argv` ends with exit code 2 and one line on stderr holding `fragment`,
    before any work: nothing at `results`."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err
    assert not Path(results).exists()


def assert_manifest_refused(command: str, text: str, fragment: str, folder: Path, capsys, options=()) -> None:
    """`command --manifest` on a manifest holding `text` is refused in one line holding `fragment`,
    nothing written."""
    manifest, results = Path(folder) / "manifest.csv", Path(folder) / "results"
    manifest.write_text(text)
    assert_refused_in_one_line([command, "--manifest", str(manifest), "--out", str(results), *options], capsys,
                               fragment, results)
