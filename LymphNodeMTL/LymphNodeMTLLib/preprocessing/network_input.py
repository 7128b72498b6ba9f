"""Patch preprocessing shared by training and inference: CT window, the seed-guidance channel and,
for a model that reads them, the prompt channels (prompt_channels.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .prompt_channels import PROMPT_CHANNELS, PatchPrompts, prompt_channels


@dataclass(frozen=True)
class PreprocessingConfig:
    """How a node patch is built; saved in the model's config.json so inference matches training.

    Attributes:
        patch_size: voxels per side of the cubic patch.
        patch_spacing_mm: isotropic patch voxel size; the patch covers size x spacing mm.
        hu_window: HU range kept (soft tissue, fat, necrosis, contrast vessels); clipped outside.
        guidance_sigma_vox: width of the Gaussian seed-guidance channel (and of each click's).
        prompt_channels: the network also reads the radiologist's prompts (clicks, the mask so
            far, a long-axis line, a box) as five more channels.
    """

    patch_size: int = 48
    patch_spacing_mm: float = 1.0
    hu_window: tuple[float, float] = (-250.0, 350.0)
    guidance_sigma_vox: float = 2.5
    prompt_channels: bool = False

    @property
    def input_channels(self) -> int:
        """Channels of the network input: CT, seed guidance and the prompt channels, if read."""
        return 2 + len(PROMPT_CHANNELS) * self.prompt_channels

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessingConfig":
        d = dict(d)
        if "hu_window" in d:
            d["hu_window"] = tuple(float(v) for v in d["hu_window"])
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hu_window"] = list(self.hu_window)
        if not self.prompt_channels:  # the form of every model folder without them
            del d["prompt_channels"]
        return d


def _centre_half(hu_window) -> tuple[float, float]:
    lo, hi = hu_window
    return (lo + hi) / 2.0, (hi - lo) / 2.0


def window_hu(patches_hu: torch.Tensor, config: PreprocessingConfig) -> torch.Tensor:
    """Clip to the HU window and scale it to [-1, 1]."""
    centre, half = _centre_half(config.hu_window)
    return (patches_hu.clamp(*config.hu_window) - centre) / half


def unwindow_hu(windowed: torch.Tensor, hu_window) -> torch.Tensor:
    """HU back from window_hu's [-1, 1] (values outside the window stay at its bounds)."""
    centre, half = _centre_half(hu_window)
    return windowed * half + centre


def guidance_channel(config: PreprocessingConfig, device=None, dtype=torch.float32) -> torch.Tensor:
    """(1, 1, N, N, N) Gaussian centred on the patch centre, where the seed is."""
    n = config.patch_size
    coords = torch.arange(n, device=device, dtype=dtype) - (n - 1) / 2.0
    d2 = coords.view(-1, 1, 1) ** 2 + coords.view(1, -1, 1) ** 2 + coords.view(1, 1, -1) ** 2
    return torch.exp(-d2 / (2.0 * config.guidance_sigma_vox**2)).view(1, 1, n, n, n)


def network_input(patches_hu: torch.Tensor, config: PreprocessingConfig,
                  prompts: list[PatchPrompts | None] | None = None) -> torch.Tensor:
    """(B, 1, N, N, N) HU patches -> (B, config.input_channels, N, N, N) network input; `prompts`:
    per patch, its prompts on the patch grid (None: a seed alone)."""
    guide = guidance_channel(config, patches_hu.device, patches_hu.dtype)
    parts = [window_hu(patches_hu, config), guide.expand_as(patches_hu)]
    if config.prompt_channels:
        given = prompts if prompts is not None else [None] * patches_hu.shape[0]
        parts.append(prompt_channels(given, config.patch_size, config.guidance_sigma_vox,
                                     patches_hu.device).to(patches_hu.dtype))
    elif prompts is not None and any(p is not None and not p.empty for p in prompts):
        raise ValueError("this preprocessing has no prompt channels; the prompts would be ignored")
    return torch.cat(parts, dim=1)
