"""The held-out phantom test set of the bundled model's card (seeds 777/778, never used in training),
and the stress set beside it (another appearance model, phantoms/stress_generator.py).

    .venv/bin/python scripts/make_test_set.py --out work-tmp/testset
    # the stress set of the card (60 cases, seed 9191)
    .venv/bin/python scripts/make_test_set.py --out work-tmp/stress --world stress --synthetic 60 --seed 9191
    # the ablation's training set (docs/ablation.md): other seeds, about 3300 nodes
    .venv/bin/python scripts/make_test_set.py --out work-tmp/ablation-train --synthetic 280 --real 60 --seed 4242
    .venv/bin/lymphnode-mtl evaluate --manifest work-tmp/testset/manifest.csv --out work-tmp/eval-demo --device cpu

Spec world: 110 synthetic cases plus 20 cases with nodes inserted into the real chest and
mediastinal CT of ../shared/data/ct (about 1080 nodes), merged into one manifest. Wide world
(phantoms/wide_world.py) and stress world likewise, with --world.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from LymphNodeMTLLib.phantoms.dataset_writer import write_phantom_dataset
from LymphNodeMTLLib.phantoms.stress_generator import generate_stress_case
from LymphNodeMTLLib.phantoms.wide_world import generate_wide_case

from merge_manifests import merge_manifests  # scripts/ is on sys.path when run as a script


def _shared_ct() -> Path:
    """../shared/data/ct beside the checkout (the nearest folder up that holds it)."""
    for folder in Path(__file__).resolve().parents[1:]:
        if (folder / "shared" / "data" / "ct").is_dir():
            return folder / "shared" / "data" / "ct"
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"


SHARED_CT = _shared_ct()
GENERATORS = {"spec": None, "wide": generate_wide_case, "stress": generate_stress_case}


def write_test_set(root: Path, synthetic: int, real: int, seed: int, ct_dir: Path = SHARED_CT,
                   world: str = "spec") -> Path:
    """The merged manifest of `synthetic` synthetic cases (seed) and `real` cases on the real chest and
    mediastinal backgrounds (seed + 1); the stress world has no real part."""
    root = Path(root)
    generator = {} if GENERATORS[world] is None else {"generator": GENERATORS[world]}
    nodes = {"nodes_per_case": (4, 8)} if world == "stress" else {}
    # each part in its own folder, whose name prefixes its case ids in the merged manifest
    parts = [write_phantom_dataset(root / "synthetic", n_cases=synthetic, seed=seed, **generator, **nodes)]
    backgrounds = [str(ct_dir / n) for n in ("chest_noncontrast_lung1.nrrd", "mediastinum_contrast_crop.nii.gz")
                   if (ct_dir / n).exists()]
    if backgrounds and real and world != "stress":
        parts.append(write_phantom_dataset(root / "real", n_cases=real, seed=seed + 1, background=backgrounds,
                                           nodes_per_case=(3, 6), **generator))
    out = root / "manifest.csv"
    print(f"{merge_manifests(out, parts)} cases: {out}")
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="work-tmp/testset")
    p.add_argument("--synthetic", type=int, default=110, help="whole-synthetic cases")
    p.add_argument("--real", type=int, default=20, help="cases inserted into real CT backgrounds")
    p.add_argument("--seed", type=int, default=777, help="synthetic seed; the real-background part uses seed + 1")
    p.add_argument("--world", choices=sorted(GENERATORS), default="spec", help="which phantom generator")
    args = p.parse_args()
    write_test_set(Path(args.out), args.synthetic, args.real, args.seed, SHARED_CT, args.world)


if __name__ == "__main__":
    main()
