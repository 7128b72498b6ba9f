"""Which uncertainty signal flags the bad masks: candidates side by side, from one engine run.

    PYTHONPATH=LymphNodeMTL .venv/bin/python scripts/compare_uncertainty_signals.py collect \\
        --manifest work-tmp/v6-eval/stress-set/manifest.csv --out work-tmp/signals-stress.csv
    PYTHONPATH=LymphNodeMTL .venv/bin/python scripts/compare_uncertainty_signals.py score \\
        work-tmp/signals-stress.csv [more.csv ...]

collect: the engine predicts every case of a manifest once (no uncertainty), then each node with a
usable mask is looked at again through the view its mask came from: the plain pass, the four
test-time augmentation passes the engine used to run (test_time_augmentation_passes.py) and one patch flipped along all axes
with the seed unmoved. Per node it writes its Dice against the label map and every candidate
signal, so all candidates are scored on the same masks:

  agree4          mean pairwise Dice of the plain and the four augmented passes (the old flag)
  agree_p1..p4    Dice of the plain pass and one augmented pass
  agree_flip      Dice of the plain pass and the all-axes flip (no seed shift)
  stab_LO_HI      Dice of the seed components of probability > LO and > HI (the mask's stability
                  under a threshold change: a sharp edge keeps it, a fading one does not)
  margin          mean |2p - 1| over the mask's boundary band (one voxel in and out)
  soft_dice       Dice of the probability and the mask, within two voxels of the mask
  mean_p          mean probability inside the mask

score: picks, for each candidate, the threshold on the cases of even index (the flag must catch
at least as many Dice < 0.5 masks as the old flag does there, and flags as few Dice >= 0.8 masks as
it can) and reports recall of Dice < 0.5 masks and the share of Dice >= 0.8 masks flagged on the
cases of odd index. A node counts as flagged when its status is not ok (empty mask, seed off soft
tissue, cut by the field of view) or its signal is below the threshold.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LymphNodeMTL"))

from LymphNodeMTLLib.core.case import Case, Seed  # noqa: E402
from LymphNodeMTLLib.core.node_status import OK  # noqa: E402
from LymphNodeMTLLib.inference.engine import NodeEngine  # noqa: E402
from LymphNodeMTLLib.inference.node_status_rules import min_mask_volume_mm3  # noqa: E402
from LymphNodeMTLLib.core.mask_dice import dice_score  # noqa: E402
from LymphNodeMTLLib.inference.mask_confidence import seed_component_above, threshold_stability  # noqa: E402
from LymphNodeMTLLib.io.training_manifest import read_manifest  # noqa: E402
from LymphNodeMTLLib.io.volume_reader import read_volume  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_time_augmentation_passes as tta  # noqa: E402

STABILITY_PAIRS = ((0.3, 0.7), (0.2, 0.8), (0.4, 0.6), (0.1, 0.9))
ALL_AXES = (0, 1, 2)
BAD_DICE, GOOD_DICE = 0.5, 0.8


def one_pass_signals(probability: np.ndarray, mask: np.ndarray, spacing_mm: float) -> dict:
    out = {f"stab_{lo:g}_{hi:g}": threshold_stability(probability, spacing_mm, (lo, hi)) for lo, hi in STABILITY_PAIRS}
    band = ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)
    out["margin"] = float(np.abs(2.0 * probability[band] - 1.0).mean()) if band.any() else float("nan")
    near = ndimage.binary_dilation(mask, iterations=2)
    p = probability * near
    out["soft_dice"] = float(2.0 * (p * mask).sum() / max(p.sum() + mask.sum(), 1e-9))
    out["mean_p"] = float(probability[mask].mean()) if mask.any() else float("nan")
    return out


def flipped_probabilities(engine: NodeEngine, case: Case, centres: np.ndarray, spacing: float, flips) -> torch.Tensor:
    """Mask probabilities of the views at `centres`, each through its patch flipped along `flips`
    (patch dims) and flipped back: the engine's own input and network, batch by batch."""
    probs = []
    for start in range(0, len(centres), engine.batch_size):
        x, _ = engine._network_input(case, centres[start:start + engine.batch_size], spacing)
        batch_flips = flips[start:start + engine.batch_size]
        x = torch.stack([xi.flip([d + 1 for d in f]) if f else xi for xi, f in zip(x, batch_flips)])
        with torch.inference_mode():
            out = engine.network(x, None, slice_mm=engine._slice_mm(case, x), spacing_mm=spacing)
            prob = torch.sigmoid(out.mask_logits[:, 0]).float()
        probs.append(torch.stack([pi.flip(list(f)) if f else pi for pi, f in zip(prob, batch_flips)]).cpu())
    return torch.cat(probs)


def node_signals(engine: NodeEngine, case: Case, results, nodes) -> list[dict]:
    """Per usable node, the plain pass again and every candidate (module docstring)."""
    size = engine.config.preprocessing.patch_size
    threshold = engine.config.mask_threshold
    centres = case.seed_array()
    rows = [{} for _ in results]
    usable = [k for k, r in enumerate(results) if r.status == OK]
    spacing_of = {k: results[k].field_of_view_mm / size for k in usable}
    for spacing in sorted(set(spacing_of.values())):
        group = [k for k in usable if spacing_of[k] == spacing]
        plain, plain_logits, _ = engine._run_network(case, centres[group], spacing, None)
        masks = {k: seed_component_above(plain[row].numpy(), threshold, spacing) for row, k in enumerate(group)}
        offsets = {k: tta.pass_offsets(masks[k], spacing) for k in group}
        jobs = [(k, p) for k in group for p in range(len(tta.PASSES))] + [(k, None) for k in group]
        pass_centres = np.array([centres[k] + (offsets[k][p][::-1] * spacing if p is not None else 0.0)
                                 for k, p in jobs])
        flips = [tta.PASSES[p].flip_dims if p is not None else ALL_AXES for _, p in jobs]
        probs = flipped_probabilities(engine, case, pass_centres, spacing, flips)
        for row, k in enumerate(group):
            rows_k = [j for j, (kk, p) in enumerate(jobs) if kk == k and p is not None]
            flip_row = next(j for j, (kk, p) in enumerate(jobs) if kk == k and p is None)
            pass_masks = [tta.pass_mask(probs[j].numpy(), offsets[k][p], threshold, spacing)
                          for j, p in zip(rows_k, range(len(tta.PASSES)))]
            zero = np.zeros(3, int)
            signal = {"agree4": tta.mean_pairwise_dice([masks[k]] + pass_masks, [zero] + offsets[k])}
            for p, m in enumerate(pass_masks):
                signal[f"agree_p{p + 1}"] = tta.mean_pairwise_dice([masks[k], m], [zero, offsets[k][p]])
            flipped = seed_component_above(probs[flip_row].numpy(), threshold, spacing)
            signal["agree_flip"] = dice_score(masks[k], flipped)
            signal.update(one_pass_signals(plain[row].numpy(), masks[k], spacing))
            signal["patch_voxels"] = int(masks[k].sum())
            rows[k] = signal
    return rows


def collect(manifest: Path, out: Path, first: int, limit: int) -> None:
    engine = NodeEngine(device="cpu", uncertainty=False)
    cases = read_manifest(manifest)
    cases = list(enumerate(cases))[first:first + limit if limit else None]
    fields, written = None, 0
    with open(out, "w", newline="") as f:
        for n, mcase in cases:
            t0 = time.perf_counter()
            image, geometry, _ = read_volume(mcase.image)
            labels, _, _ = read_volume(mcase.label_map)
            case = Case(image, geometry, [Seed(node.node_id, node.ras) for node in mcase.nodes])
            results = engine.predict(case)
            signals = node_signals(engine, case, results, mcase.nodes)
            for node, r, signal in zip(mcase.nodes, results, signals):
                truth = labels == node.mask_value if node.mask_value is not None else None
                if truth is None or not truth.any():
                    continue
                row = {"set": manifest.parent.name, "case_index": n, "case_id": mcase.case_id,
                       "node_id": node.node_id, "status": r.status,
                       "dice": dice_score(r.full_mask(geometry.shape_kji), truth),
                       "volume_mm3": r.volume_mm3, "true_volume_mm3": float(truth.sum() * np.prod(geometry.spacing)),
                       "short_axis_mm": r.short_axis_mm, "field_of_view_mm": r.field_of_view_mm, **signal}
                if fields is None:
                    fields = _all_fields(list(row))
                    writer = csv.DictWriter(f, fieldnames=fields, restval="")
                    writer.writeheader()
                writer.writerow({k: v for k, v in row.items() if k in fields})
                written += 1
            f.flush()
            print(f"{n + 1} {mcase.case_id}: {len(results)} nodes, {time.perf_counter() - t0:.1f} s",
                  flush=True)
    print(f"{written} nodes -> {out}")


def _all_fields(first: list[str]) -> list[str]:
    signals = (["agree4"] + [f"agree_p{p + 1}" for p in range(len(tta.PASSES))] + ["agree_flip"]
               + [f"stab_{lo:g}_{hi:g}" for lo, hi in STABILITY_PAIRS] + ["margin", "soft_dice", "mean_p",
                                                                          "patch_voxels"])
    return [k for k in first if k not in signals] + signals


# --- scoring --------------------------------------------------------------------------------------
def _load(paths) -> list[dict]:
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            rows.extend(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k not in ("set", "case_id", "node_id", "status"):
                r[k] = float(v) if v not in ("", None) else float("nan")
    return rows


def status_flagged(rows, fragments: bool = True) -> np.ndarray:
    """Flagged whatever the signal: a status other than ok and, with `fragments`, a mask smaller
    than the engine's minimum (node_status_rules.is_fragment; the masks here predate that rule)."""
    size = 48.0
    return np.array([r["status"] != OK or (fragments and 0 < r["volume_mm3"]
                                           < min_mask_volume_mm3(r["field_of_view_mm"] / size)) for r in rows])


def flagged(rows, signal: str | None, threshold: float, fragments: bool = True) -> np.ndarray:
    base = status_flagged(rows, fragments)
    if signal is None:
        return base
    values = np.array([r[signal] for r in rows])
    return base | (np.nan_to_num(values, nan=np.inf) < threshold)


def rates(rows, flags) -> tuple[float, float, int, int]:
    d = np.array([r["dice"] for r in rows])
    bad, good = d < BAD_DICE, d >= GOOD_DICE
    return float(flags[bad].mean()), float(flags[good].mean()), int(bad.sum()), int(good.sum())


def choose_threshold(rows, signal: str, recall_needed: float) -> float:
    """The lowest threshold (fewest good masks flagged) whose recall of bad masks is at least
    `recall_needed`."""
    candidates = sorted({round(r[signal], 4) for r in rows if not math.isnan(r[signal])})
    for t in [c + 1e-4 for c in candidates]:
        if rates(rows, flagged(rows, signal, t))[0] >= recall_needed - 1e-9:
            return t
    return float("inf")


# extra network passes per node each signal costs
COST = {"agree4": 4, "agree_flip": 1, **{f"agree_p{p + 1}": 1 for p in range(len(tta.PASSES))}}


def score(paths, thresholds: dict[str, float]) -> None:
    """Markdown table: per candidate, its threshold (chosen on the fit half unless given), recall of
    Dice < 0.5 masks and share of Dice >= 0.8 masks flagged on each half and on all."""
    rows = _load(paths)
    fit = [r for r in rows if int(r["case_index"]) % 2 == 0]
    test = [r for r in rows if int(r["case_index"]) % 2 == 1]
    signals = [k for k in rows[0] if k.startswith(("agree", "stab", "margin", "soft_dice", "mean_p"))]
    needed = rates(fit, flagged(fit, "agree4", tta.LOW_AGREEMENT, fragments=False))[0]
    print(f"{len(rows)} nodes of {len({(r['set'], r['case_id']) for r in rows})} cases: thresholds chosen on the "
          f"{len(fit)} nodes of even-index cases (recall >= the old flag's {needed:.3f} there), reported on the "
          f"{len(test)} of odd-index cases; flagged = status not ok, or a fragment, or signal < threshold\n")
    print("| signal | extra passes | threshold | fit: recall (Dice<0.5) | fit: good flagged (Dice>=0.8) "
          "| test: recall | test: good flagged | all: recall | all: good flagged |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    table = [("agree4 < 0.8 (old flag, no fragment rule)", "agree4", tta.LOW_AGREEMENT, False)]
    table += [(s, s, thresholds.get(s, choose_threshold(fit, s, needed)), True) for s in signals]
    table += [("status only", None, 0.0, False), ("status and fragments", None, 0.0, True)]
    for name, signal, t, fragments in table:
        cells = []
        for part in (fit, test, rows):
            recall, good, nb, ng = rates(part, flagged(part, signal, t, fragments))
            cells += [f"{recall:.3f} of {nb}", f"{good:.3f} of {ng}"]
        print(f"| {name} | {COST.get(signal, 0)} | {t:.3f} | " + " | ".join(cells) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--manifest", required=True, type=Path)
    c.add_argument("--out", required=True, type=Path)
    c.add_argument("--first", type=int, default=0, help="start at this case (0-based)")
    c.add_argument("--limit", type=int, default=0, help="at most N cases")
    s = sub.add_parser("score")
    s.add_argument("csv", nargs="+")
    s.add_argument("--threshold", action="append", default=[], metavar="SIGNAL=VALUE",
                   help="use this threshold for a signal instead of choosing one on the fit half")
    args = p.parse_args()
    if args.step == "collect":
        collect(args.manifest, args.out, args.first, args.limit)
    else:
        score(args.csv, {k: float(v) for k, v in (t.split("=", 1) for t in args.threshold)})


if __name__ == "__main__":
    main()
