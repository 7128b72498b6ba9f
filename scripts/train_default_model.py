"""Recipe of the bundled demonstration model (Resources/Models/phantom-demo).

Phantoms per docs/phantom-spec.md, part whole-synthetic and part inserted into the real CT
backgrounds of ../shared/data/ct, generated in memory (the same sampler as a manifest would use),
then the standard Trainer. Sized to finish on a 2-core CPU; pass --minutes to change the budget.
On a GPU machine pass --device cuda and --workers (phantom generation and batch loading in parallel
processes); the bundled model's exact two-step recipe is in its model card.

    .venv/bin/python scripts/train_default_model.py --out Resources/Models/phantom-demo --minutes 40
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import time
from pathlib import Path

import numpy as np
import torch
from LymphNodeMTLLib.core.errors import InputError
from LymphNodeMTLLib.core.node_attributes import ATTRIBUTE_NAMES
from LymphNodeMTLLib.io.volume_reader import read_volume
from LymphNodeMTLLib.phantoms.case_generator import generate_phantom_case
from LymphNodeMTLLib.phantoms.dataset_writer import phantom_attributes
from LymphNodeMTLLib.training.node_patch_dataset import CaseNodes, PatchCache, build_patch_cache
from LymphNodeMTLLib.training.trainer import TrainConfig, Trainer

SHARED_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"
BACKGROUNDS = ["chest_noncontrast_lung1.nrrd", "mediastinum_contrast_crop.nii.gz", "dicom_abdomen_series"]


def phantom_caches(n_synthetic: int, n_real: int, seed: int, pre, jitter_mm: float, ct_dir: Path,
                   workers: int = 1) -> PatchCache:
    """Node patches of n_synthetic whole-synthetic and n_real real-background phantom cases.

    Each case draws from its own SeedSequence child, so the data do not depend on the worker count."""
    global _BACKGROUNDS
    # read each real background once; the generator takes (array, geometry) pairs
    _BACKGROUNDS = [read_volume(ct_dir / b)[:2] for b in BACKGROUNDS if (ct_dir / b).exists()]
    if n_real and not _BACKGROUNDS:
        print(f"no real CT backgrounds under {ct_dir}: synthetic cases only", flush=True)
    plan = [None] * n_synthetic + [i % len(_BACKGROUNDS) for i in range(n_real if _BACKGROUNDS else 0)]
    jobs = [(n, child, bg, pre, jitter_mm)
            for n, (child, bg) in enumerate(zip(np.random.SeedSequence(seed).spawn(len(plan)), plan))]
    if workers <= 1:
        return PatchCache.concatenate(map(_case_cache, jobs))
    # fork: the workers inherit the backgrounds instead of receiving a copy per case
    with multiprocessing.get_context("fork").Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        return PatchCache.concatenate(pool.imap(_case_cache, jobs, chunksize=2))


_BACKGROUNDS: list = []


def _case_cache(job) -> PatchCache:
    n, seed_seq, bg, pre, jitter_mm = job
    case = _generate(np.random.default_rng(seed_seq), None if bg is None else _BACKGROUNDS[bg])
    nodes = CaseNodes(
        f"case{n:04d}", case.image, case.geometry,
        np.array([p.seed_ras for p in case.nodes]), [p.node_id for p in case.nodes],
        [p.label for p in case.nodes], [p.mask_value for p in case.nodes], case.label_map,
        [p.probability for p in case.nodes],
        [_attributes(p.features) for p in case.nodes],
    )
    return build_patch_cache([nodes], pre, jitter_mm)


def _attributes(features) -> tuple:
    """What the phantom writer puts in the nodes CSV as attributes, in the manifest reader's order."""
    given = phantom_attributes(features)
    return tuple(float(given[k]) if k in given else math.nan for k in ATTRIBUTE_NAMES)


def _generate(rng, background):
    """Real backgrounds hold less fat than a synthetic body: fewer nodes, fewer still if crowded."""
    n_nodes = int(rng.integers(6, 13)) if background is None else int(rng.integers(3, 7))
    while True:
        try:
            return generate_phantom_case(rng, n_nodes, background=background)
        except InputError:
            if n_nodes == 1:
                raise
            n_nodes = max(1, n_nodes // 2)


def card(config, metrics: dict, n_nodes: int, recipe: str) -> str:
    return f"""# Model card: {config.model_id}

**Trained on synthetic data — a demonstration, not a clinical model.** Not for clinical use.

## What it is
LymphNodeMTL multi-task network (MONAI DynUNet blocks, channels {config.network.get('channels')}):
node mask from a seed plus a metastasis probability from M2ANet-style soft-mask pooling and the node's
radiologic descriptors (size, shape, central necrosis, fat inside the node, noise anisotropy,
fatty-hilum sector signs, the source CT's slice thickness; node_descriptors.py, hilum_sectors.py), trained with MA-MTLN uncertainty weighting; head refitted on the training
nodes, kind: {metrics.get("descriptor_kind", "none")} (descriptor_refit.py; a soft-label MLP is
fitted to the phantoms' P, with their visible latent features as auxiliary outputs); probabilities temperature-calibrated on the validation nodes
and the training nodes' cross-fitted logits (T = {config.temperature:.3f}). Patch {config.preprocessing.patch_size}^3 voxels at
{config.preprocessing.patch_spacing_mm} mm, HU window {list(config.preprocessing.hu_window)}.

## Training data
{n_nodes} phantom nodes following docs/phantom-spec.md v1: whole-synthetic bodies and nodes
inserted into the fat of three real CT backgrounds (non-contrast chest, contrast mediastinum,
contrast upper abdomen DICOM). Labels are drawn from the spec's known label model, so no real
patient's metastasis status was ever seen.

## Recipe
`{recipe}`

## Validation (held-out phantom cases of the training generator)
""" + "\n".join(f"- {k}: {v}" for k, v in metrics.items()) + """

## Intended use
Demonstrating and testing the LymphNodeMTL software end to end. Its probabilities describe the
phantom label model, not human disease: do not use them for any patient.
"""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="Resources/Models/phantom-demo")
    p.add_argument("--synthetic", type=int, default=260)
    p.add_argument("--real", type=int, default=60)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--minutes", type=float, default=40.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--channels", default="12,24,48,96")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--workers", type=int, default=1, help="processes generating phantoms and loading batches")
    p.add_argument("--init-from", default=None, help="fine-tune from this model folder (same network)")
    p.add_argument("--ct-dir", type=Path, default=SHARED_CT, help="folder holding the real CT backgrounds")
    args = p.parse_args()
    config = TrainConfig(model_id="lymphnode-mtl-phantom-demo-v4", epochs=args.epochs, max_minutes=args.minutes,
                         seed=args.seed, device=args.device, patience=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, init_from=args.init_from, num_workers=args.workers if args.workers > 1 else 0,
                         network={"channels": [int(c) for c in args.channels.split(",")]})
    trainer = Trainer(config, args.out)
    t0 = time.perf_counter()
    cache = phantom_caches(args.synthetic, args.real, args.seed, trainer.pre, config.jitter_mm, args.ct_dir,
                           args.workers)
    print(f"cached {len(cache)} nodes in {time.perf_counter() - t0:.0f} s", flush=True)
    trainer.set_cache(cache)
    trainer.fit()
    recipe = (f"scripts/train_default_model.py --synthetic {args.synthetic} --real {args.real} "
              f"--epochs {args.epochs} --minutes {args.minutes} --seed {args.seed} --channels {args.channels} "
              f"--batch-size {args.batch_size} --lr {args.lr} --device {trainer.device.type}"
              + (f" --init-from {args.init_from}" if args.init_from else ""))
    metrics = trainer.finish(lambda cfg, m: card(cfg, m, len(cache), recipe))
    print(metrics)


if __name__ == "__main__":
    main()
