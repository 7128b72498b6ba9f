"""The MONAI norm argument every block of the network is built with, from the config's norm name."""

from __future__ import annotations

NORM_NAMES = ("instance", "batch")


def monai_norm(norm: str):
    """MONAI's `norm` / `norm_name` argument for a config norm name.

    Instance norm gets a learnable affine (as DynUNet blocks use it); it also keeps every node
    independent of its batch mates, so batched and one-by-one inference agree."""
    return (norm, {"affine": True}) if norm == "instance" else norm
