"""Merge training manifests into one (paths made relative to the new manifest's folder; case ids
prefixed with their source folder's name), e.g. the CPU ablation's training set of docs/ablation.md:

    .venv/bin/python scripts/make_test_set.py --out work-tmp/ablation-train --synthetic 280 --real 60 --seed 4242
    .venv/bin/python scripts/make_test_set.py --out work-tmp/ablation-train-extra --synthetic 45 --real 0 --seed 5151
    .venv/bin/python scripts/merge_manifests.py --out work-tmp/ablation-manifest/manifest.csv \\
        work-tmp/ablation-train/manifest.csv work-tmp/ablation-train-extra/manifest.csv
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

PATH_COLUMNS = ("image", "nodes", "label_map")


def merge_manifests(out: Path, manifests) -> int:
    """Write one manifest at `out` with every case of `manifests`; returns the case count."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for manifest in map(Path, manifests):
        with open(manifest, newline="") as f:
            for row in csv.DictReader(f):
                for k in PATH_COLUMNS:
                    if row.get(k):
                        row[k] = os.path.relpath(manifest.parent / row[k], out.parent)
                row["case_id"] = f"{manifest.parent.name}-{row['case_id']}"
                rows.append(row)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True, help="the merged manifest.csv")
    p.add_argument("manifests", nargs="+")
    args = p.parse_args()
    print(f"{merge_manifests(Path(args.out), args.manifests)} cases: {args.out}")


if __name__ == "__main__":
    main()
