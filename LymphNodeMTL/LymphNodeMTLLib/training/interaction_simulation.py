"""Simulated interactions for training a network that follows prompts (nnInteractive / DeepEdit style).

Each training sample is drawn as one of the ways a radiologist starts a node, in patch voxel
coordinates (z, y, x) of the augmented patch:
- a seed alone (the network must keep working without prompts),
- the RECIST long axis: the longest in-plane chord of the true mask on an axial plane, each end
  jittered by a few mm,
- a box around the true mask, each side loosened by 0-20 % of the node's extent,
and, for a share of samples, followed by a few rounds of clicks that the trainer simulates on the
network's own predictions: each at the centre of the largest error region of the current mask
(core/simulated_click.py), positive on a missed part, negative on a leak, with the mask so far as
an input, as inference feeds them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..core.measurements import boundary_points, feret_caliper

MODES = ("seed", "line", "box")


@dataclass(frozen=True)
class InteractionConfig:
    """How training samples are prompted; saved in the recipe. The four start shares sum to 1.

    Attributes:
        seed_only: share of samples with a seed alone and no clicks.
        seed_clicks: share started from the seed and corrected by clicks.
        line: share started from a long-axis line.
        box: share started from a box.
        click_share: of the line and box samples, the share corrected by clicks after it.
        max_clicks: clicks per corrected sample are drawn from 1..max_clicks.
        line_jitter_mm: each end of a line moves up to this far in its axial plane.
        box_loosen: each side of a box moves out by up to this share of the node's extent.
    """

    seed_only: float = 0.35
    seed_clicks: float = 0.25
    line: float = 0.25
    box: float = 0.15
    click_share: float = 0.5
    max_clicks: int = 3
    line_jitter_mm: float = 3.0
    box_loosen: float = 0.2

    def __post_init__(self):
        shares = (self.seed_only, self.seed_clicks, self.line, self.box)
        if min(shares) < 0 or abs(sum(shares) - 1.0) > 1e-6:
            raise ValueError(f"interaction shares {shares} must be >= 0 and sum to 1")
        if self.max_clicks < 1:
            raise ValueError("max_clicks must be at least 1")

    @classmethod
    def from_dict(cls, d: dict | None) -> "InteractionConfig | None":
        return None if d is None else cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def draw(self, rng: np.random.Generator) -> tuple[str, int]:
        """(start mode, clicks to simulate) for one sample."""
        u = rng.random()
        clicks = int(rng.integers(1, self.max_clicks + 1))
        if u < self.seed_only:
            return "seed", 0
        if u < self.seed_only + self.seed_clicks:
            return "seed", clicks
        mode = "line" if u < self.seed_only + self.seed_clicks + self.line else "box"
        return mode, clicks if rng.random() < self.click_share else 0


def long_axis_line(mask: np.ndarray) -> np.ndarray | None:
    """(2, 3) ends (z, y, x) of the RECIST long axis of a (Z, Y, X) bool mask on an isotropic
    axis-aligned grid whose z is the S axis: the longest in-plane chord over the axial planes."""
    best, best_len = None, -1.0
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        caliper = feret_caliper(boundary_points(mask[z], np.ones(2)))
        if caliper.long_mm > best_len:
            best_len = caliper.long_mm
            best = np.column_stack([np.full(2, float(z)), caliper.long_ends])
    return best


def bounding_box(mask: np.ndarray) -> np.ndarray | None:
    """(2, 3) low and high voxel coordinates of a bool mask's extent; None when empty."""
    idx = np.argwhere(mask)
    if not len(idx):
        return None
    return np.stack([idx.min(axis=0), idx.max(axis=0)]).astype(float)


def jittered_line(line: np.ndarray, rng: np.random.Generator, jitter_vox: float) -> np.ndarray:
    """Each end moved within a disc of `jitter_vox` in its axial plane (a radiologist's hand)."""
    out = line.copy()
    for end in out:
        r, a = jitter_vox * np.sqrt(rng.random()), 2 * np.pi * rng.random()
        end[1:] += (r * np.cos(a), r * np.sin(a))
    return out


def loosened_box(box: np.ndarray, rng: np.random.Generator, loosen: float) -> np.ndarray:
    """Each side moved out by 0..loosen of the node's extent along that axis (at least half a voxel,
    so the box holds the mask's voxel edges)."""
    extent = box[1] - box[0] + 1.0
    out = box.copy()
    out[0] -= 0.5 + rng.random(3) * loosen * extent
    out[1] += 0.5 + rng.random(3) * loosen * extent
    return out


def batch_prompts(batch: dict) -> list:
    """The line and box prompts of a training batch (NaN rows: none), one PatchPrompts or None per
    sample, to which simulated clicks are then added."""
    from ..preprocessing.prompt_channels import PatchPrompts

    out = []
    for line, box in zip(batch["line"].numpy(), batch["box"].numpy()):
        has_line, has_box = not np.isnan(line).any(), not np.isnan(box).any()
        out.append(PatchPrompts(line=line if has_line else None, box=box if has_box else None)
                   if has_line or has_box else None)
    return out


def simulate_clicks(predict_masks, prompts: list, truth: np.ndarray, clicks) -> list:
    """Add each sample's simulated clicks to its prompts, round by round on the network's own
    predictions: round r predicts with the r clicks so far (and the mask they gave), then clicks
    at the centre of the largest error of that prediction. After it, a sample with k clicks holds
    them all and, as the mask so far, the prediction of its first k - 1.

    predict_masks(rows, prompts of those rows) -> (len(rows), N, N, N) bool predictions; truth:
    (B, N, N, N) bool; clicks: (B,) clicks to simulate per sample."""
    from ..core.simulated_click import error_region_click
    from ..preprocessing.prompt_channels import PatchPrompts

    clicks = [int(c) for c in clicks]
    prompts = [p if p is not None else PatchPrompts() if c else None for p, c in zip(prompts, clicks)]
    for round_ in range(max(clicks, default=0)):
        rows = [b for b, c in enumerate(clicks) if c > round_]
        predicted = predict_masks(rows, [prompts[b] for b in rows])
        for b, mask in zip(rows, predicted):
            click = error_region_click(mask, truth[b])
            p = prompts[b]
            p.mask_so_far = mask
            if click is not None:
                point = np.asarray(click.index, dtype=float)[None]
                if click.positive:
                    p.positive = np.concatenate([p.positive, point])
                else:
                    p.negative = np.concatenate([p.negative, point])
    return prompts
