"""Which autocast dtype to train with: bf16 where the hardware runs it fast, else fp32.

bf16 needs no loss scaling (same exponent range as fp32). On CPUs with AMX or AVX512-BF16 it makes
3-D convolutions several times faster; elsewhere it is slower than fp32, so it stays off.
"""

from __future__ import annotations

import torch


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        cpu = torch.cpu
        fast = getattr(cpu, "_is_amx_tile_supported", lambda: False)() or getattr(
            cpu, "_is_avx512_bf16_supported", lambda: False)()
        return torch.bfloat16 if fast else None
    return None
