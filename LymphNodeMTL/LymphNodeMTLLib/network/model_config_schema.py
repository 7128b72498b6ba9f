"""The model folder's config.json checked against a schema with ranges, before a network is built.

A config can be edited by hand or damaged, and some values give results that look fine and are
wrong: a negative temperature inverts every probability, a reversed HU window or a mask threshold
of 1 or more empties every mask while the labels stay. So every value the engine reads is checked
for type and range here, and a config that fails is refused with one line naming the field.

The "network" dict is checked only for what every network reads (channels, head width); its
component options are checked where the network is assembled (network_config.py).
"""

from __future__ import annotations

import math
from pathlib import Path

from ..core.errors import ModelError

FORMAT = "LymphNodeMTL-model/1"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# (path, required, test, what a valid value is)
_RULES = (
    ("format", True, lambda v: v == FORMAT, f"must be {FORMAT!r}"),
    ("model_id", True, lambda v: isinstance(v, str) and v.strip() != "", "must be a non-empty name"),
    ("preprocessing.patch_size", False, lambda v: _whole(v) and 8 <= v <= 512,
     "must be a whole number of voxels from 8 to 512"),
    ("preprocessing.patch_spacing_mm", False, lambda v: _number(v) and 0.05 <= v <= 20,
     "must be a voxel size from 0.05 to 20 mm"),
    ("preprocessing.hu_window", False,
     lambda v: isinstance(v, list) and len(v) == 2 and all(_number(x) and -3000 <= x <= 4000 for x in v)
     and v[0] < v[1], "must be [low, high] HU with -3000 <= low < high <= 4000"),
    ("preprocessing.guidance_sigma_vox", False, lambda v: _number(v) and 0 < v <= 100,
     "must be a width above 0 and at most 100 voxels"),
    ("preprocessing.prompt_channels", False, lambda v: isinstance(v, bool), "must be true or false"),
    ("postprocessing.mask_threshold", False, lambda v: _number(v) and 0 < v < 1,
     "must be a probability strictly between 0 and 1"),
    ("postprocessing.metastasis_threshold", False, lambda v: _number(v) and 0 < v < 1,
     "must be a probability strictly between 0 and 1"),
    ("calibration.temperature", False, lambda v: _number(v) and 0.01 <= v <= 100,
     "must be a logit temperature from 0.01 to 100 (0 or negative would break or invert "
     "every probability)"),
    ("labels", False, lambda v: isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) and x for x in v),
     "must be two class names, benign first"),
    ("clinical_use", False, lambda v: isinstance(v, bool), "must be true or false"),
    ("network", False, lambda v: isinstance(v, dict), "must be an object"),
    ("network.channels", False, lambda v: isinstance(v, list) and len(v) >= 1
     and all(_whole(c) and 1 <= c <= 4096 for c in v), "must be a list of channel counts from 1 to 4096"),
    ("network.head_refine_hidden", False, lambda v: _whole(v) and 1 <= v <= 65536,
     "must be a whole number of units from 1 to 65536"),
    ("preprocessing", False, lambda v: isinstance(v, dict), "must be an object"),
    ("postprocessing", False, lambda v: isinstance(v, dict), "must be an object"),
    ("calibration", False, lambda v: isinstance(v, dict), "must be an object"),
    ("training", False, lambda v: isinstance(v, dict), "must be an object"),
)
_MISSING = object()


def _lookup(config: dict, path: str):
    value = config
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def validate_model_config(config, source="config.json") -> None:
    """Refuse a model config with a missing, mistyped or out-of-range value.

    Args:
        config: the parsed config.json.
        source: the file, named in the message.

    Raises:
        ModelError: one line naming the field, its value and what is valid.
    """
    where = Path(source)
    if not isinstance(config, dict):
        raise ModelError(f"{where} is not a model config (a JSON object is needed); copy the model folder again")
    # containers before their fields, so a field lookup never meets a list where a dict belongs
    for path, required, test, what in sorted(_RULES, key=lambda rule: rule[0].count(".")):
        value = _lookup(config, path)
        if value is _MISSING:
            if required:
                raise ModelError(f"{where} has no {path!r}; it is not a complete model config, copy "
                                 "the model folder again")
            continue
        if not test(value):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise ModelError(f"{where}: {path} is {shown} but {what}; the model folder was edited or "
                             "damaged, copy it again (or retrain)")
