"""Write the real lesions of ../shared/data/real_lesions as an evaluation manifest (masks, no labels).

Each case folder there holds ct.nrrd, truth.nrrd (1 = lesion) and seeds.csv (id,l,p,s in LPS mm).
The manifest written here points at those files where they are (nothing is copied) and carries one
node per seed, in RAS mm, with mask value 1 and no label, so `evaluate` reports Dice, HD95 and empty
masks and leaves AUC out. These cases are for measuring only, never for training.

    .venv/bin/python scripts/real_lesion_manifest.py --out work-tmp/real-lesions
    .venv/bin/lymphnode-mtl evaluate --manifest work-tmp/real-lesions/manifest.csv --out work-tmp/eval-real
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path



def _shared_real_lesions() -> Path:
    """../shared/data/real_lesions beside the checkout (the nearest folder up that holds it)."""
    for folder in Path(__file__).resolve().parents[1:]:
        candidate = folder / "shared" / "data" / "real_lesions"
        if candidate.is_dir():
            return candidate
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "real_lesions"


REAL_LESIONS = _shared_real_lesions()


def write_real_lesion_manifest(source: Path, out_dir: Path) -> Path:
    """manifest.csv (and one nodes CSV per case) in `out_dir` for every case folder of `source`."""
    source, out_dir = Path(source).resolve(), Path(out_dir)
    cases = sorted(p for p in source.iterdir() if (p / "ct.nrrd").is_file() and (p / "seeds.csv").is_file())
    if not cases:
        raise FileNotFoundError(f"no case folders with ct.nrrd and seeds.csv under {source}")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in cases:
        with open(case / "seeds.csv", newline="") as f:
            seeds = list(csv.DictReader(f))
        nodes_csv = out_dir / f"{case.name}_nodes.csv"
        with open(nodes_csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "r", "a", "s", "mask_value"])
            for seed in seeds:  # LPS -> RAS: the first two axes change sign
                writer.writerow([seed["id"], -float(seed["l"]), -float(seed["p"]), float(seed["s"]), 1])
        rows.append([case.name, str(case / "ct.nrrd"), nodes_csv.name, str(case / "truth.nrrd")])
    manifest = out_dir / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case_id", "image", "nodes", "label_map"])
        writer.writerows(rows)
    return manifest


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=REAL_LESIONS)
    p.add_argument("--out", type=Path, default=Path("work-tmp/real-lesions"))
    args = p.parse_args()
    print(write_real_lesion_manifest(args.source, args.out))


if __name__ == "__main__":
    main()
