"""A trained network's weights given more input channels, at zero weight.

A model that reads prompts (preprocessing/prompt_channels.py) starts from one that does not: the
convolutions that read the network input get the new channels with zero weights, so with no
prompt the widened network computes what the source did (up to the order of floating-point sums),
and training learns what the prompts mean from there.
"""

from __future__ import annotations

import torch


def widen_input_channels(state: dict, target: dict) -> dict:
    """`state` fitted to the shapes of `target` (a state dict of the wider network): a weight that
    differs from its target only by reading fewer input channels (dim 1) gets the missing ones
    last, at zero weight; everything else is left as it is (a strict load then checks the rest)."""
    out = dict(state)
    for key, weight in state.items():
        want = target.get(key)
        if want is None or want.shape == weight.shape or weight.dim() < 2:
            continue
        if (want.shape[0], *want.shape[2:]) == (weight.shape[0], *weight.shape[2:]) and want.shape[1] > weight.shape[1]:
            extra = weight.new_zeros(weight.shape[0], want.shape[1] - weight.shape[1], *weight.shape[2:])
            out[key] = torch.cat([weight, extra], dim=1)
    return out
