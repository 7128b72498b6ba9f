"""The held-out phantom test set of the bundled model's card (seeds 777/778, never used in training).

    .venv/bin/python scripts/make_test_set.py --out work-tmp/testset
    # the ablation's training set (docs/ablation.md): other seeds, about 3300 nodes
    .venv/bin/python scripts/make_test_set.py --out work-tmp/ablation-train --synthetic 280 --real 60 --seed 4242
    .venv/bin/lymphnode-mtl evaluate --manifest work-tmp/testset/manifest.csv --out work-tmp/eval-demo --device cpu

110 synthetic cases plus 20 cases with nodes inserted into the real chest and mediastinal CT of
../shared/data/ct (about 1080 nodes), merged into one manifest.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from LymphNodeMTLLib.phantoms.dataset_writer import write_phantom_dataset
from merge_manifests import merge_manifests  # scripts/ is on sys.path when run as a script

SHARED_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="work-tmp/testset")
    p.add_argument("--synthetic", type=int, default=110, help="whole-synthetic cases")
    p.add_argument("--real", type=int, default=20, help="cases inserted into real CT backgrounds")
    p.add_argument("--seed", type=int, default=777, help="synthetic seed; the real-background part uses seed + 1")
    args = p.parse_args()
    root = Path(args.out)
    # each part in its own folder, whose name prefixes its case ids in the merged manifest
    parts = [write_phantom_dataset(root / "synthetic", n_cases=args.synthetic, seed=args.seed)]
    backgrounds = [str(SHARED_CT / n) for n in ("chest_noncontrast_lung1.nrrd", "mediastinum_contrast_crop.nii.gz")
                   if (SHARED_CT / n).exists()]
    if backgrounds and args.real:
        parts.append(write_phantom_dataset(root / "real", n_cases=args.real, seed=args.seed + 1,
                                           background=backgrounds, nodes_per_case=(3, 6)))
    out = root / "manifest.csv"
    print(f"{merge_manifests(out, parts)} cases: {out}")


if __name__ == "__main__":
    main()
