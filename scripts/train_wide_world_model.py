"""Recipe of a bundled model trained on the wide world across patch spacings, evaluated three ways.

Training data, generated in memory (phantoms/wide_world.py, plus a share of the spec's own world so
that nothing gets worse in distribution): whole-synthetic bodies and random parts of every real CT
background in ../shared/data/ct, each node cached at patch spacings from 1 to 3 mm (48 to 144 mm
fields of view, the range the engine's zoom uses) and drawn at one of them per step. Never trained
on: ../shared/data/real_lesions (measured only).

After training, the model folder is evaluated on (1) the model card's in-distribution test set
(scripts/make_test_set.py: the spec's generator, seeds 777/778), (2) the stress set
(phantoms/stress_generator.py: another appearance model, seed 9191) and (3) the real lesions
(scripts/real_lesion_manifest.py, masks and no labels); the figures go into its model card, with
the recipe and how long each step took.

    # CPU, two cores, as v6 was made (the bundled network widened to read prompts, 8 epochs on
    # simulated interactions): about 3 min of phantoms and cache, 13-16 min an epoch, 20 of refit and
    # calibration (about 2.3 h), then 25 of evaluation; --resume goes on from the last epoch
    .venv/bin/python scripts/train_wide_world_model.py --out work-tmp/v6 \\
        --init-from Resources/Models/phantom-demo --workers 2 --seed 6 --epochs 8 --minutes 150
    # one GPU with 16 CPU cores, about ten minutes (phantoms and cache on the CPUs take about 3)
    .venv/bin/python scripts/train_wide_world_model.py --out Resources/Models/phantom-demo --device cuda \\
        --init-from Resources/Models/phantom-demo --workers 15 --wide 600 --wide-real 200 --spec 150 \\
        --epochs 12 --minutes 4.5
    # a smoke run of the whole recipe (minutes): a few cases, one epoch, tiny test sets
    .venv/bin/python scripts/train_wide_world_model.py --out work-tmp/wide-tiny --tiny
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
import torch
from LymphNodeMTLLib.core.errors import InputError
from LymphNodeMTLLib.core.node_attributes import ATTRIBUTE_NAMES
from LymphNodeMTLLib.evaluation.evaluator import evaluate_manifest
from LymphNodeMTLLib.inference.engine import NodeEngine
from LymphNodeMTLLib.io.volume_reader import read_volume
from LymphNodeMTLLib.phantoms.case_generator import generate_phantom_case
from LymphNodeMTLLib.phantoms.dataset_writer import phantom_attributes, write_phantom_dataset
from LymphNodeMTLLib.phantoms.stress_generator import generate_stress_case
from LymphNodeMTLLib.phantoms.wide_world import generate_wide_case
from LymphNodeMTLLib.training.interaction_simulation import InteractionConfig
from LymphNodeMTLLib.training.node_patch_dataset import CaseNodes, PatchCache, build_patch_cache
from LymphNodeMTLLib.training.trainer import CHECKPOINT, TrainConfig, Trainer, trained_spacings

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling scripts, when imported
from make_test_set import write_test_set  # noqa: E402
from real_lesion_manifest import REAL_LESIONS, write_real_lesion_manifest  # noqa: E402

SHARED_CT = REAL_LESIONS.parent / "ct"
BACKGROUNDS = ["chest_noncontrast_lung1.nrrd", "mediastinum_contrast_crop.nii.gz", "dicom_abdomen_series"]
STRESS_SEED = 9191
_BACKGROUNDS: list = []  # read once in the parent; forked workers inherit them
INTERACTIVE_SETS = ("stress", "real_lesions")


def world_caches(n_wide: int, n_wide_real: int, n_spec: int, seed: int, pre, jitter_mm: float, ct_dir: Path,
                 spacing_options: dict, workers: int = 1) -> PatchCache:
    """Node patches of wide-world cases (synthetic and on real backgrounds) and spec-world cases.

    Each case draws from its own SeedSequence child, so the data do not depend on the worker count."""
    global _BACKGROUNDS
    _BACKGROUNDS = [read_volume(ct_dir / b)[:2] for b in BACKGROUNDS if (ct_dir / b).exists()]
    if n_wide_real and not _BACKGROUNDS:
        print(f"no real CT backgrounds under {ct_dir}: synthetic cases only", flush=True)
    plan = ([("wide", None)] * n_wide
            + [("wide", i % len(_BACKGROUNDS)) for i in range(n_wide_real if _BACKGROUNDS else 0)]
            + [("spec", None)] * n_spec)
    children = np.random.SeedSequence(seed).spawn(len(plan))
    jobs = [(n, child, world, bg, pre, jitter_mm, spacing_options)
            for n, (child, (world, bg)) in enumerate(zip(children, plan))]
    if workers <= 1:
        return PatchCache.concatenate(map(_case_cache, jobs))
    with multiprocessing.get_context("fork").Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        return PatchCache.concatenate(pool.imap(_case_cache, jobs, chunksize=2))


def _case_cache(job) -> PatchCache:
    n, seed_seq, world, bg, pre, jitter_mm, spacing_options = job
    rng = np.random.default_rng(seed_seq)
    background = None if bg is None else _BACKGROUNDS[bg]
    case = _generate(rng, world, background)
    nodes = CaseNodes(
        f"{world}{n:05d}", case.image, case.geometry,
        np.array([p.seed_ras for p in case.nodes]), [p.node_id for p in case.nodes],
        [p.label for p in case.nodes], [p.mask_value for p in case.nodes], case.label_map,
        [p.probability for p in case.nodes], [_attributes(p.features) for p in case.nodes],
    )
    # which spacing levels each node gets: from the case's own stream, so workers do not matter
    options = {**spacing_options, "seed": int(seed_seq.generate_state(1)[0])} if spacing_options else {}
    return build_patch_cache([nodes], pre, jitter_mm, **options)


def _attributes(features) -> tuple:
    given = phantom_attributes(features)
    return tuple(float(given[k]) if k in given else math.nan for k in ATTRIBUTE_NAMES)


def _generate(rng, world: str, background, attempts: int = 5):
    """One case; a real background holds fewer nodes, fewer still when crowded, and a crop of it
    with no room even for one node is drawn again (the stream goes on: another crop)."""
    n_nodes = int(rng.integers(6, 13)) if background is None else int(rng.integers(3, 8))
    for attempt in range(attempts):
        try:
            if world == "wide":
                return generate_wide_case(rng, n_nodes, background=background)
            return generate_phantom_case(rng, n_nodes, background=background)
        except InputError:
            if attempt == attempts - 1:
                raise
            n_nodes = max(1, n_nodes // 2)


def evaluate_three_ways(model_dir: Path, work: Path, args, device: str) -> dict:
    """In-distribution test set, stress set and real lesions, each scored by evaluate."""
    engine = NodeEngine(model_dir, device)
    sets = {
        "in_distribution": write_test_set(work / "test-set", args.test_synthetic, args.test_real, 777, SHARED_CT),
        "stress": write_phantom_dataset(work / "stress-set", n_cases=args.stress, seed=STRESS_SEED,
                                        nodes_per_case=(4, 8), generator=generate_stress_case),
    }
    if REAL_LESIONS.is_dir():
        sets["real_lesions"] = write_real_lesion_manifest(REAL_LESIONS, work / "real-lesions")
    results = {}
    for name, manifest in sets.items():
        t0 = time.perf_counter()
        # clicks, lines and boxes on the sets that test steering (the in-distribution set keeps its
        # zero-click figures, comparable with the models before)
        clicks = args.interactive if engine.config.preprocessing.prompt_channels and name in INTERACTIVE_SETS else 0
        results[name] = evaluate_manifest(engine, manifest, work / f"eval-{name}", n_boot=args.n_boot,
                                          interactive_clicks=clicks)
        results[name]["minutes"] = (time.perf_counter() - t0) / 60
        print(f"{name}: " + ", ".join(f"{k} {results[name][k]:.3f}" for k in ("auc", "ece", "dice_mean", "dice_p10")
                                      if k in results[name]) + f", empty masks {results[name]['empty_masks']}",
              flush=True)
        if "interactive" in results[name]:
            print(f"{name} interactive: {json.dumps(results[name]['interactive'])}", flush=True)
    return results


def _row(name: str, s: dict) -> str:
    def f(key):
        v = s.get(key)
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"
    return (f"| {name} | {s['nodes']} | {f('dice_mean')} | {f('dice_p10')} | {s.get('empty_masks', '–')} | "
            f"{f('auc')} | {f('bayes_ceiling_auc')} | {f('ece')} |")


INTERACTIVE_HEADER = ("| data | nodes | Dice 0 clicks | 1 click | 2 clicks | 3 clicks | NoC@85 | NoC@90 | "
                      "line alone (p10) | box alone (p10) |\n|---|---|---|---|---|---|---|---|---|---|")


def _interactive_row(name: str, s: dict) -> str | None:
    i = s.get("interactive")
    if not i:
        return None
    curve = " | ".join(f"{d:.3f}" for d in i["dice_after_clicks"])
    return (f"| {name} | {i['nodes']} | {curve} | {i['noc85']:.2f} | {i['noc90']:.2f} | "
            f"{i['line_dice']:.3f} ({i['line_dice_p10']:.3f}) | {i['box_dice']:.3f} ({i['box_dice_p10']:.3f}) |")


def _stratum_items(s: dict):
    for key, title in (("by_size", "size"), ("by_contact", "contact with similar-attenuation tissue"),
                       ("by_slice_thickness", "slice thickness")):
        for stratum, t in (s.get(key) or {}).items():
            yield f"{title}: {stratum}", t


def _strata(s: dict) -> list[str]:
    return [_row(name, t) for name, t in _stratum_items(s)]


def _prompt_lines(config) -> list[str]:
    """What the card says of the prompts a model reads and how it learnt them."""
    if not config.preprocessing.prompt_channels:
        return []
    interactions = InteractionConfig.from_dict(config.training.get("interactions") or {}).to_dict()
    return ["", "It also reads a radiologist's prompts (preprocessing/prompt_channels.py): positive and negative",
            "clicks, the mask so far, a RECIST long-axis line and a box, as five input channels added at zero weight",
            "to the model it was fine-tuned from, so a seed alone started from that model's behaviour. Training drew",
            "per sample (training/interaction_simulation.py, " + json.dumps(interactions) + "): a seed alone, a seed",
            "corrected by clicks, a long-axis line from the true mask (ends jittered up to "
            f"{interactions.get('line_jitter_mm', 3.0)} mm) or a box", f"loosened by up to {interactions.get('box_loosen', 0.2):.0%}"
            " per side, lines and boxes also corrected by clicks; up to", f"{interactions.get('max_clicks', 3)} clicks "
            "were simulated on the network's own current predictions, each at the centre of the largest",
            "error region (positive on a miss, negative on a leak). Prompted samples trained the mask only: the",
            "probability of a prompted node is read from its final mask on the plain input, as a re-classification."]


def card(config, metrics: dict, n_nodes: int, recipe: str, timings: dict, evaluations: dict) -> str:
    pre = config.preprocessing
    header = "| data | nodes | Dice mean | Dice p10 | empty masks | AUC | Bayes ceiling | ECE |\n|---|---|---|---|---|---|---|---|"
    lines = [f"# Model card: {config.model_id}", "",
             "**Trained on synthetic data — a demonstration, not a clinical model.** Not for clinical use.", "",
             "## What it is",
             f"LymphNodeMTL multi-task network (channels {config.network.get('channels')}): node mask from a seed and a",
             "metastasis probability (soft-mask pooling plus the node's radiologic descriptors), head refitted on the",
             f"training nodes, temperature-calibrated (T = {config.temperature:.3f}). Patch {pre.patch_size}^3 voxels, trained",
             f"at patch spacings {list(config.training.get('spacing_levels_mm', []))} mm (fields of view "
             f"{[round(pre.patch_size * s) for s in config.training.get('spacing_levels_mm', [])]} mm); "
             f"HU window {list(pre.hu_window)}.", *_prompt_lines(config), "",
             "## Training data",
             f"{n_nodes} cached node patches (one per node and spacing level) of the wide world (phantoms/wide_world.py:",
             "nodes against organs, muscle, bowel and vessels, clusters, bulky and lobulated nodes, rim and heterogeneous",
             "enhancement, contrast phases, random crops of the real CT backgrounds of ../shared/data/ct, thin, thick and",
             "coarse grids in any orientation, scanner HU, blur and noise randomised) and of the spec's own world.",
             "Labels come from the spec's label model (docs/phantom-spec.md v1); a bulky node's label reads its short",
             "axis at the spec's clip (30 mm). No real lesion was trained on.", "",
             "## Recipe", recipe, "",
             "Time: " + ", ".join(f"{k} {v:.1f} min" for k, v in timings.items()) + ".", "",
             "## Evaluation (lymphnode-mtl evaluate on each set)", "", header]
    names = {"in_distribution": "in-distribution test set (spec generator, seeds 777/778)",
             "stress": f"stress set (stress_generator.py, seed {STRESS_SEED})",
             "real_lesions": "real lesions (../shared/data/real_lesions; masks only)"}
    for key, s in evaluations.items():
        lines.append(_row(names.get(key, key), s))
    interactive = [row for key, s in evaluations.items() if (row := _interactive_row(names.get(key, key), s))]
    if interactive:
        lines += ["", "## Prompts (lymphnode-mtl evaluate --interactive 3)", "",
                  "Clicks are simulated at the centre of the largest error region of the mask shown (positive on a",
                  "miss, negative on a leak), each refining the node; NoC = clicks to reach Dice 0.85 / 0.90 (4 when",
                  "never). The line is the true mask's RECIST long axis, the box its bounding box, each given alone.",
                  "", INTERACTIVE_HEADER] + interactive
    for key, s in evaluations.items():
        if key == "real_lesions":
            continue
        lines += ["", f"### {names.get(key, key)}, by stratum", "", header] + _strata(s)
        rows = [r for name, t in _stratum_items(s) if (r := _interactive_row(name, t))]
        if rows:
            lines += ["", INTERACTIVE_HEADER] + rows
    lines += ["", "## Validation (held-out cases of the training worlds)", ""]
    lines += [f"- {k}: {v}" for k, v in metrics.items()]
    lines += ["", "## Intended use",
              "Demonstrating and testing the LymphNodeMTL software end to end. Its probabilities describe the",
              "phantom label model, not human disease: do not use them for any patient.", ""]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="Resources/Models/phantom-demo")
    p.add_argument("--work", type=Path, default=None, help="folder for the test sets and reports (default: OUT-eval)")
    p.add_argument("--wide", type=int, default=240, help="wide-world cases with a synthetic body")
    p.add_argument("--wide-real", type=int, default=90, help="wide-world cases on real CT backgrounds")
    p.add_argument("--spec", type=int, default=60, help="cases of the spec's own world")
    p.add_argument("--epochs", type=int, default=7)
    p.add_argument("--minutes", type=float, default=65.0, help="training budget (the epochs stop there)")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--channels", default="12,24,48,96")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--spacing-range", default="1.0,3.0", help="patch spacings from,to (mm)")
    p.add_argument("--levels", type=int, default=4, help="spacing levels in the range")
    p.add_argument("--levels-per-node", type=int, default=2, help="levels each node is cached at (memory)")
    p.add_argument("--workers", type=int, default=1, help="processes generating phantoms and loading batches")
    p.add_argument("--init-from", default=None, help="fine-tune from this model folder (same network)")
    p.add_argument("--ct-dir", type=Path, default=SHARED_CT)
    p.add_argument("--test-synthetic", type=int, default=110)
    p.add_argument("--test-real", type=int, default=20)
    p.add_argument("--stress", type=int, default=60, help="stress cases")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--interactive", type=int, default=3, help="clicks simulated per node in the evaluation")
    p.add_argument("--model-id", default="lymphnode-mtl-wide-world-v6")
    p.add_argument("--no-prompts", action="store_true",
                   help="train for seeds alone (no prompt channels, no simulated interactions)")
    p.add_argument("--interactions", default="{}",
                   help="JSON of InteractionConfig fields (training/interaction_simulation.py); {} = its defaults")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.pt (the same command otherwise; the cache is rebuilt)")
    p.add_argument("--no-evaluation", action="store_true",
                   help="train, refit and save only (evaluate later with --evaluate-only)")
    p.add_argument("--tiny", action="store_true", help="smoke run: 3+2+1 cases, 1 epoch, tiny test sets")
    p.add_argument("--evaluate-only", action="store_true",
                   help="evaluate the model already in --out three ways and rewrite its card (no training)")
    args = p.parse_args()
    if args.evaluate_only:
        return evaluate_only(args)
    if args.tiny:
        args.wide, args.wide_real, args.spec, args.epochs = 3, 2, 1, 1
        args.test_synthetic, args.test_real, args.stress, args.n_boot = 2, 1, 2, 50
    low, high = (float(v) for v in args.spacing_range.split(","))
    prompts = not args.no_prompts
    config = TrainConfig(model_id=args.model_id, epochs=args.epochs, max_minutes=args.minutes,
                         seed=args.seed, device=args.device, patience=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, init_from=args.init_from, num_workers=args.workers if args.workers > 1 else 0,
                         network={"channels": [int(c) for c in args.channels.split(",")]},
                         spacing_range_mm=[low, high], spacing_levels=args.levels,
                         spacing_levels_per_node=args.levels_per_node,
                         preprocessing={"prompt_channels": True} if prompts else {},
                         interactions=json.loads(args.interactions) if prompts else None,
                         keep_best=not prompts)
    timings = {}
    trainer = Trainer(config, args.out)
    t0 = time.perf_counter()
    cache = world_caches(args.wide, args.wide_real, args.spec, args.seed, trainer.pre, config.jitter_mm, args.ct_dir,
                         trainer.cache_spacing_options(), args.workers)
    timings["phantoms and cache"] = (time.perf_counter() - t0) / 60
    print(f"cached {len(cache)} patches of {len(set(zip(cache.case_ids, cache.node_ids)))} nodes "
          f"in {timings['phantoms and cache']:.1f} min", flush=True)
    trainer.set_cache(cache)
    if args.resume:
        trainer.load_checkpoint(Path(args.out) / CHECKPOINT)
        print(f"resumed after epoch {trainer.epoch}", flush=True)
    trainer.model_config.training["spacing_levels_mm"] = list(trained_spacings(config, trainer.pre))
    trainer.model_config.training["cached_patches"] = len(cache)
    t0 = time.perf_counter()
    trainer.fit()
    timings["training"] = (time.perf_counter() - t0) / 60
    recipe = (f"`{' '.join(['scripts/train_wide_world_model.py'] + sys.argv[1:])}` "
              f"(ran on {trainer.device.type}, {torch.get_num_threads()} threads)")
    trainer.model_config.training["recipe"] = recipe
    trainer.model_config.training["recipe_minutes"] = dict(timings)  # the refit's own time is in the card
    t0 = time.perf_counter()
    metrics = trainer.finish(lambda cfg, m: card(cfg, m, len(cache), recipe, timings, {}))
    timings["refit and calibration"] = (time.perf_counter() - t0) / 60
    if args.no_evaluation:
        print(json.dumps({"timings_min": timings}), flush=True)
        return
    evaluate_and_write_card(args, trainer.model_config, metrics, len(cache), recipe, timings, trainer.device.type)


def evaluate_and_write_card(args, config, metrics: dict, n_patches: int, recipe: str, timings: dict,
                            device: str) -> None:
    """Evaluate the saved model three ways; rewrite its card with the figures (weights and config
    stay as saved)."""
    work = args.work or Path(f"{args.out.rstrip('/')}-eval")
    t0 = time.perf_counter()
    evaluations = evaluate_three_ways(Path(args.out), work, args, device)
    timings["evaluation"] = (time.perf_counter() - t0) / 60
    text = card(config, metrics, n_patches, recipe, timings, evaluations)
    (Path(args.out) / "model-card.md").write_text(text)
    (work / "evaluations.json").write_text(json.dumps(
        {k: {m: v for m, v in s.items() if not isinstance(v, dict)} for k, s in evaluations.items()}, indent=2,
        default=str) + "\n")
    print(json.dumps({"timings_min": timings, "validation": {k: v for k, v in metrics.items()
                                                            if isinstance(v, (int, float))}}, indent=1))


def evaluate_only(args) -> None:
    """The evaluation step of a recipe run alone, on the model it saved in --out."""
    from LymphNodeMTLLib.core.device import resolve_device
    from LymphNodeMTLLib.network.model_store import load_model

    config = load_model(args.out).config
    timings = dict(config.training.get("recipe_minutes") or {})
    n_patches = config.training.get("cached_patches", 0)
    recipe = config.training.get("recipe", "(not recorded)")
    recipe += f"; evaluated by `scripts/train_wide_world_model.py --out {args.out} --evaluate-only`"
    evaluate_and_write_card(args, config, config.training.get("validation", {}), n_patches, recipe, timings,
                            resolve_device(args.device).type)


if __name__ == "__main__":
    main()
