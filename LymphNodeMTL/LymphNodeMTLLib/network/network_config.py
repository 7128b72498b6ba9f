"""The network's typed configuration: what the model config's "network" dict says, checked.

config.json keeps the dict as it always was (only the keys that differ from the defaults);
NetworkConfig.from_dict reads it into typed fields and checks every value (type, range, known
component name), so a bad config fails at once with one line naming the key and what it may be,
not deep inside a block constructor. Where the dict took either a flag or a dict of options
(`fusion`, `routing_gate`), the field is a nested config, None when the component is off.

Keys (docs/ablation.md says which paper each component comes from):

    in_channels              input channels (windowed CT + seed guidance = 2; + 5 prompt channels)
    channels                 feature channels per encoder scale, finest first
    head_hidden, dropout     width of the metastasis MLP, dropout before its last layer
    pool_sigma_mm            context margin of the soft mask pooling
    patch_spacing_mm         patch voxel size (from the preprocessing unless given)
    hu_window                preprocessing HU window (from the preprocessing unless given)
    norm                     "instance" (default) | "batch"
    head_refine_hidden       width of the head's refine MLP, set by a soft-label refit (0: none)
    tasks                    ["segmentation", "classification"] (default); one alone: the single-task baselines
    encoder                  "resunet" (default) | "dense_attention" (SD-MdaNet; dense_layers per block)
    fusion                   null | "ma_mtln" | {"type": "ma_mtln", "fused_channels", "fusion_scale", "dilations"}
    deep_supervision         false | true (MA-MTLN auxiliary mask heads)
    task_aware_attention     false | true (MA-MTLN skip gates + bottom-up classification path)
    task_specific_attention  false | true (SD-MdaNet per-task attention)
    routing_gate             null | true | {"shared_experts": 2, "task_experts": 1, "expert_kernel": 1} (MT-IDS)
    aux_short_axis           false | true (MT-IDS auxiliary short-axis regression)
    stations                 0 | number of station classes (MT-IDS auxiliary station task)
    head                     "soft_mask_pooling" (default, M2ANet) | "lesion_attention" (LA-Net; lesion_map_scale)
    mixed_head               false | true (SD-MdaNet classification + regression head)
    pool_region              "seed_ball" | "patch": where a network without a mask branch pools
    seed_ball_radius_mm      radius of that seed ball
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, fields

from ..core.errors import ModelError
from .component_registry import ENCODERS, FUSIONS, HEADS, POOL_REGIONS, TASKS
from .norm_layer import NORM_NAMES


class NetworkConfigError(ModelError):
    """A network config value of the wrong type, out of range, or naming no known component (a
    ModelError: load_model and the CLI pass its one line on as it is)."""


def _fail(key: str, message: str):
    raise NetworkConfigError(f"network.{key}: {message}")


def _names(allowed) -> str:
    return ", ".join(repr(a) for a in allowed)


def _integer(key, value, minimum=None, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(key, f"{value!r} is not an integer")
    if minimum is not None and value < minimum:
        _fail(key, f"{value} is below the minimum {minimum}")
    return int(value)


def _number(key, value, minimum=None, above=None, below=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(key, f"{value!r} is not a finite number")
    if minimum is not None and value < minimum:
        _fail(key, f"{value} is below the minimum {minimum}")
    if above is not None and value <= above:
        _fail(key, f"{value} must be above {above}")
    if below is not None and value >= below:
        _fail(key, f"{value} must be below {below}")
    return float(value)


def _flag(key, value):
    if not isinstance(value, bool):
        _fail(key, f"{value!r} is not true or false")
    return value


def _choice(key, value, allowed):
    if value not in allowed:
        _fail(key, f"{value!r} is not one of {_names(allowed)}")
    return value


def _sequence(key, value, length=None):
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        _fail(key, f"{value!r} is not a list")
    if length is not None and len(value) != length:
        _fail(key, f"{list(value)!r} must have {length} entries")
    return tuple(value)


def _options(cls, key, value: dict):
    """A nested config from its dict; unknown keys are errors."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        _fail(f"{key}.{unknown[0]}", f"unknown option; {key} takes {_names(sorted(known))}")
    return cls(**value)


@dataclass(frozen=True)
class FusionConfig:
    """MA-MTLN multi-scale fusion (multiscale_fusion.py).

    Attributes:
        type: the fusion block's name (component_registry.FUSIONS).
        fused_channels: channels of the fused feature (None: the finest scale's).
        fusion_scale: index of the scale whose grid holds the fused feature.
        dilations: dilations of the visual attention block.
    """

    type: str = "ma_mtln"
    fused_channels: int | None = None
    fusion_scale: int = 1
    dilations: tuple[int, ...] = (1, 2, 3)

    def __post_init__(self):
        _choice("fusion.type", self.type, tuple(FUSIONS))
        _integer("fusion.fused_channels", self.fused_channels, 1, allow_none=True)
        _integer("fusion.fusion_scale", self.fusion_scale, 0)
        dilations = _sequence("fusion.dilations", self.dilations)
        if not dilations:
            _fail("fusion.dilations", "needs at least one dilation")
        object.__setattr__(self, "dilations", tuple(_integer("fusion.dilations", d, 1) for d in dilations))

    @classmethod
    def parse(cls, value) -> "FusionConfig | None":
        """null / false / {} (off), true or a fusion name (its defaults), or a dict of options."""
        if value is None or value is False or value == {}:
            return None
        if value is True:
            return cls()
        if isinstance(value, str):
            return cls(type=value)
        if isinstance(value, dict):
            return _options(cls, "fusion", value)
        _fail("fusion", f"{value!r} is not null, a fusion name ({_names(FUSIONS)}) or a dict of its options")


@dataclass(frozen=True)
class RoutingGateConfig:
    """MT-IDS dual-control routing gate (routing_gate.py).

    Attributes:
        shared_experts: number of shared experts.
        task_experts: number of experts per task.
        expert_kernel: kernel of the experts' residual blocks.
    """

    shared_experts: int = 2
    task_experts: int = 1
    expert_kernel: int = 1

    def __post_init__(self):
        _integer("routing_gate.shared_experts", self.shared_experts, 1)
        _integer("routing_gate.task_experts", self.task_experts, 1)
        _integer("routing_gate.expert_kernel", self.expert_kernel, 1)

    @classmethod
    def parse(cls, value) -> "RoutingGateConfig | None":
        """null / false / {} (off), true (the defaults), or a dict of options."""
        if value is None or value is False or value == {}:
            return None
        if value is True:
            return cls()
        if isinstance(value, dict):
            return _options(cls, "routing_gate", value)
        _fail("routing_gate", f"{value!r} is not null, true or a dict of its options")


# keys that switch a published component on (anything but their default builds the variants of
# docs/ablation.md); the others size the base network
COMPONENT_KEYS = ("tasks", "encoder", "dense_layers", "fusion", "deep_supervision", "task_aware_attention",
                  "task_specific_attention", "routing_gate", "aux_short_axis", "stations", "head", "mixed_head",
                  "lesion_map_scale", "pool_region", "seed_ball_radius_mm")


@dataclass(frozen=True)
class NetworkConfig:
    """The network's architecture (see the module docstring for every key)."""

    in_channels: int = 2
    channels: tuple[int, ...] = (16, 32, 64, 128)
    head_hidden: int = 64
    pool_sigma_mm: float = 3.0
    patch_spacing_mm: float = 1.0
    dropout: float = 0.1
    norm: str = "instance"
    hu_window: tuple[float, float] = (-250.0, 350.0)
    head_refine_hidden: int = 0
    tasks: tuple[str, ...] = TASKS
    encoder: str = "resunet"
    dense_layers: int = 2
    fusion: FusionConfig | None = None
    deep_supervision: bool = False
    task_aware_attention: bool = False
    task_specific_attention: bool = False
    routing_gate: RoutingGateConfig | None = None
    aux_short_axis: bool = False
    stations: int = 0
    head: str = "soft_mask_pooling"
    mixed_head: bool = False
    lesion_map_scale: int = 1
    pool_region: str = "seed_ball"
    seed_ball_radius_mm: float = 5.0

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        put("in_channels", _integer("in_channels", self.in_channels, 1))
        channels = _sequence("channels", self.channels)
        if not channels:
            _fail("channels", "needs at least one scale")
        put("channels", tuple(_integer("channels", c, 1) for c in channels))
        put("head_hidden", _integer("head_hidden", self.head_hidden, 1))
        put("pool_sigma_mm", _number("pool_sigma_mm", self.pool_sigma_mm, above=0.0))
        put("patch_spacing_mm", _number("patch_spacing_mm", self.patch_spacing_mm, above=0.0))
        put("dropout", _number("dropout", self.dropout, minimum=0.0, below=1.0))
        _choice("norm", self.norm, NORM_NAMES)
        window = tuple(_number("hu_window", v) for v in _sequence("hu_window", self.hu_window, 2))
        if window[0] >= window[1]:
            _fail("hu_window", f"{list(window)} must run from low to high")
        put("hu_window", window)
        put("head_refine_hidden", _integer("head_refine_hidden", self.head_refine_hidden, 0))
        tasks = _sequence("tasks", self.tasks)
        for t in tasks:
            _choice("tasks", t, TASKS)
        if not tasks:
            _fail("tasks", f"needs at least one of {_names(TASKS)}")
        put("tasks", tuple(t for t in TASKS if t in tasks))  # one order, whatever the config's
        _choice("encoder", self.encoder, tuple(ENCODERS))
        put("dense_layers", _integer("dense_layers", self.dense_layers, 1))
        if self.fusion is not None and not isinstance(self.fusion, FusionConfig):
            put("fusion", FusionConfig.parse(self.fusion))
        for key in ("deep_supervision", "task_aware_attention", "task_specific_attention", "aux_short_axis",
                    "mixed_head"):
            _flag(key, getattr(self, key))
        if self.routing_gate is not None and not isinstance(self.routing_gate, RoutingGateConfig):
            put("routing_gate", RoutingGateConfig.parse(self.routing_gate))
        put("stations", _integer("stations", self.stations, 0))
        _choice("head", self.head, tuple(HEADS))
        put("lesion_map_scale", _integer("lesion_map_scale", self.lesion_map_scale, 0))
        _choice("pool_region", self.pool_region, tuple(POOL_REGIONS))
        put("seed_ball_radius_mm", _number("seed_ball_radius_mm", self.seed_ball_radius_mm, above=0.0))

    @property
    def segments(self) -> bool:
        return "segmentation" in self.tasks

    @property
    def classifies(self) -> bool:
        return "classification" in self.tasks

    @classmethod
    def from_dict(cls, d: dict | None, *, patch_spacing_mm: float | None = None,
                  hu_window=None, in_channels: int | None = None) -> "NetworkConfig":
        """The config of a model config's "network" dict. patch_spacing_mm, hu_window and
        in_channels: the preprocessing's, used where the dict does not give them (a dict that gives
        other input channels than the preprocessing makes is refused)."""
        d = dict(d or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            _fail(unknown[0], f"unknown key; the network config takes {_names(known)}")
        if patch_spacing_mm is not None:
            d.setdefault("patch_spacing_mm", patch_spacing_mm)
        if hu_window is not None:
            d.setdefault("hu_window", hu_window)
        if in_channels is not None:
            if d.setdefault("in_channels", in_channels) != in_channels:
                _fail("in_channels", f"is {d['in_channels']} but the preprocessing makes {in_channels} input channels")
        d["fusion"] = FusionConfig.parse(d.get("fusion"))
        d["routing_gate"] = RoutingGateConfig.parse(d.get("routing_gate"))
        return cls(**d)

    def to_dict(self) -> dict:
        """The keys that differ from the defaults, as JSON values (the form config.json keeps)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value == _default(f):
                continue
            if isinstance(value, (FusionConfig, RoutingGateConfig)):
                value = {g.name: _json(getattr(value, g.name)) for g in fields(value)}
            out[f.name] = _json(value)
        return out

    def named_components(self) -> tuple[str, ...]:
        """The component keys set to anything but their default (empty: the base network)."""
        return tuple(k for k in COMPONENT_KEYS if getattr(self, k) != _default(_field(k)))


def _field(name: str):
    return next(f for f in fields(NetworkConfig) if f.name == name)


def _default(f):
    return f.default if f.default is not MISSING else f.default_factory()


def _json(value):
    return list(value) if isinstance(value, tuple) else value

