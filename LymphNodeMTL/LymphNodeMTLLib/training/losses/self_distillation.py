"""SD-MdaNet multi-teacher self-distillation (docs/methods.md, section 3; our reading).

    L = L_sup(labelled nodes) + beta * sum_t w_t * T^2 * KL(p_t^T || p_s^T)   over all nodes

p^T = sigmoid(logit / T), the softened metastasis probability (a two-class distribution). The
teachers are trained model folders (the full multi-task net and single-task variants); their
logits are computed once per node on the un-augmented patch (metastasis status does not change
under flips and small rotations), so distillation costs no extra forward passes while training.
KL direction: teacher as target, Hinton et al.'s usual form (methods.md writes the arguments the
other way; for two-class outputs both are zero exactly when student and teacher agree).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


def binary_kl(target_logit: torch.Tensor, logit: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Elementwise KL(Bernoulli(sigmoid(target/T)) || Bernoulli(sigmoid(logit/T))), stable in log space."""
    t = target_logit / temperature
    s = logit / temperature
    p = torch.sigmoid(t)
    return (p * (F.logsigmoid(t) - F.logsigmoid(s))
            + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-s)))


class MultiTeacherDistillation(nn.Module):
    """beta * sum_t w_t * T^2 * mean over nodes of KL(p_t^T || p_s^T).

    Args:
        weights: one weight per teacher (normalised to sum 1).
        beta: weight of the distillation term against the supervised loss.
        temperature: softening temperature T.
    """

    def __init__(self, weights: Sequence[float], beta: float = 0.5, temperature: float = 2.0):
        super().__init__()
        w = torch.tensor([float(x) for x in weights])
        self.register_buffer("weights", w / w.sum(), persistent=False)
        self.beta = float(beta)
        self.temperature = float(temperature)

    def forward(self, student_logit: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """student_logit (B,); teacher_logits (T, B) (NaN where a teacher has no opinion)."""
        s = student_logit.float().unsqueeze(0).expand_as(teacher_logits)
        known = ~torch.isnan(teacher_logits)
        kl = binary_kl(torch.nan_to_num(teacher_logits.float()), s, self.temperature)
        per_teacher = (kl * known).sum(1) / known.sum(1).clamp_min(1)
        return self.beta * self.temperature**2 * (self.weights.to(per_teacher.device) * per_teacher).sum()


@dataclass
class DistillationConfig:
    """Training-config block: {"teachers": [model folders], "weights": [...], "beta": .., "temperature": ..}."""

    teachers: list = field(default_factory=list)
    weights: list | None = None
    beta: float = 0.5
    temperature: float = 2.0

    @classmethod
    def from_dict(cls, d: dict | None) -> "DistillationConfig | None":
        if not d:
            return None
        cfg = cls(**d)
        if not cfg.teachers:
            return None
        if cfg.weights is None:
            cfg.weights = [1.0] * len(cfg.teachers)
        if len(cfg.weights) != len(cfg.teachers):
            raise ValueError("distillation: one weight per teacher")
        return cfg

    def loss(self) -> MultiTeacherDistillation:
        return MultiTeacherDistillation(self.weights, self.beta, self.temperature)


@torch.no_grad()
def teacher_logits(model_dirs: Sequence, cache, pre, device, batch_size: int = 16) -> torch.Tensor:
    """(T, N) metastasis logits of each teacher on each cached node's central patch, each patch read
    at its own spacing (batch_spacing.py)."""
    from ...network.model_store import load_model
    from ...preprocessing.network_input import network_input

    m, n = cache.margin, pre.patch_size
    crop = (slice(None), slice(None), *(slice(m, m + n),) * 3)
    rows = []
    slices = cache.slice_or_default(pre.patch_spacing_mm)
    spacings = cache.spacing_or_default(pre.patch_spacing_mm)
    for folder in model_dirs:
        loaded = load_model(folder)
        tp = loaded.config.preprocessing
        if (tp.patch_size, tp.patch_spacing_mm) != (pre.patch_size, pre.patch_spacing_mm):
            raise ValueError(f"teacher {folder} uses {tp.patch_size} voxels of {tp.patch_spacing_mm} mm; "
                             f"the student {pre.patch_size} of {pre.patch_spacing_mm} mm")
        net = loaded.network.to(device).eval()
        logits = torch.zeros(len(cache))
        for start in range(0, len(cache), batch_size):
            rows_of = slice(start, start + batch_size)
            x = network_input(cache.images[rows_of][crop].float().to(device), tp)
            out = net(x, slice_mm=slices[rows_of].to(device), spacing_mm=spacings[rows_of].to(device))
            logits[rows_of] = out.metastasis_logit.float().cpu() / loaded.config.temperature
        rows.append(logits)
    return torch.stack(rows)
