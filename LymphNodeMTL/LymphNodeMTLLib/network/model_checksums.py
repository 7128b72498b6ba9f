"""The model folder's checksum file: SHA-256 of config.json and of the weights, together.

The file is in `sha256sum` format (`<hex>  <name>` per line), so `sha256sum -c` checks it too.
Both files are covered: a config edited after training (a temperature, a threshold) changes what
the weights mean as much as changed weights do, so either mismatch refuses the folder.

Folders written before the config was covered list only the weights. They still load (their
weights are checked, their config is checked by the schema, model_config_schema.py): refusing
them would force every model trained with an earlier version to be retrained, while the schema
already refuses the config values that would silently corrupt results.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..core.errors import ModelError


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checksum_text(folder: Path, names) -> str:
    """The checksum file's text for `names` in `folder` (sorted, as sha256sum lists them)."""
    return "".join(f"{sha256_of(Path(folder) / name)}  {name}\n" for name in sorted(names))


def read_checksums(path: Path) -> dict[str, str]:
    """{file name: hex digest} from a sha256sum-format file; a bare digest names no file."""
    entries = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        parts = line.split(None, 1)
        if not parts:
            continue
        digest = parts[0].lower()
        name = parts[1].strip().lstrip("*") if len(parts) > 1 else ""
        entries[name] = digest
    return entries


def verify_checksums(folder: Path, hash_file: str, weights_file: str, config_file: str) -> str:
    """Check the weights (always) and the config (when listed) against the checksum file.
    Returns the weights' digest. Raises ModelError naming the file that does not match."""
    folder = Path(folder)
    recorded = read_checksums(folder / hash_file)
    weights = sha256_of(folder / weights_file)
    if recorded.get(weights_file, recorded.get("")) != weights:
        raise ModelError(
            f"weights in {folder} do not match their recorded SHA-256; the file is corrupt or was "
            "changed, copy the model folder again"
        )
    if config_file in recorded and recorded[config_file] != sha256_of(folder / config_file):
        raise ModelError(
            f"{config_file} in {folder} does not match its recorded SHA-256; the config was edited "
            "or damaged, copy the model folder again"
        )
    return weights
