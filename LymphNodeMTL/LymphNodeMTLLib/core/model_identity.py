"""Which model made a result: its id and the SHA-256 of its weights (the exact model)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelIdentity:
    model_id: str
    weights_sha256: str = ""
