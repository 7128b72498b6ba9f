"""The API's request and response bodies as pydantic models (docs/server-api.md).

FastAPI validates every JSON request against these and publishes all of them in the server's
`/openapi.json`, so the schema a client or an API fuzzer reads is the one the server enforces.
Requests are strict (no "3" for 3, no unknown keys where the readers refuse them); what the models
cannot say (a seed inside the CT, a mask that fits its box, prompts the engine can follow) the
service and the readers check after them and refuse with 422. A new route declares its bodies here.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from ..core.node_result import NodeResult
from ..io.prompt_reader import MAX_CLICKS
from .inference_service import KINDS



def _integral_float_as_int(value):
    """JSON Schema counts 12.0 as an integer; strict pydantic would not."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Point = Annotated[list[float], Field(min_length=3, max_length=3, description="[x, y, z] in mm")]
# a voxel index: a CT side has at most 6 digits (protocol.HEADER_PATTERNS)
Index = Annotated[int, Field(ge=0, le=999_999), BeforeValidator(_integral_float_as_int)]
IndexTriple = Annotated[list[Index], Field(min_length=3, max_length=3)]
JobState = Literal["queued", "running", "done", "failed", "cancelled"]
VOLUME_ID_PATTERN = "^[0-9a-f]{64}$"  # sha256 hex, as protocol.volume_id gives it


class _Request(BaseModel):
    model_config = ConfigDict(strict=True)


class ErrorOut(BaseModel):
    """Every refusal: one line that says what is wrong and what to do."""

    error: str


# --- requests -----------------------------------------------------------------------------------
class SeedIn(_Request):
    id: Annotated[str, Field(min_length=1, max_length=200)]
    ras: Point


class NodeMaskIn(_Request):
    """A node's mask for classify: base64(np.packbits(mask)) over the box stop - start (C order)."""

    id: Annotated[str, Field(min_length=1)]
    seed_ras: Point
    bbox_start_kji: IndexTriple
    bbox_stop_kji: IndexTriple
    mask: str


class ClickIn(_Request):
    model_config = ConfigDict(extra="forbid")
    point: Point
    positive: bool


class NodePromptsIn(_Request):
    """One node's prompts; every key optional, clicks followed in their order."""

    model_config = ConfigDict(extra="forbid")
    seed: Point | None = None
    line: Annotated[list[Point], Field(min_length=2, max_length=2)] | None = None
    box: Annotated[list[Point], Field(min_length=2, max_length=2, description="[low corner, high corner]")] | None = None
    clicks: Annotated[list[ClickIn], Field(max_length=MAX_CLICKS)] | None = None


class PromptsDocument(_Request):
    """The prompts file of `predict --prompts` (io/prompt_reader.py)."""

    model_config = ConfigDict(extra="forbid")
    coordinate_system: Annotated[str, Field(pattern="^([Rr][Aa][Ss]|[Ll][Pp][Ss])$", description="RAS or LPS")]
    # node id -> its prompts; an id needs a non-space character (pydantic says so of the keys it
    # matches, not of the others: hence additionalProperties)
    nodes: Annotated[dict[Annotated[str, Field(pattern=r"\S")], NodePromptsIn],
                     Field(min_length=1, json_schema_extra={"additionalProperties": False})]


class JobOptions(_Request):
    """Engine options; ones this server's engine does not take come back as `ignored_options`."""

    model_config = ConfigDict(extra="allow")
    uncertainty: bool | None = None
    deformable: bool | None = Field(None, description="follow_up: allow the B-spline stage (default true)")


_EXAMPLE_CT = "9f2c" * 16  # a volume_id: protocol.volume_id of the CT sent before


class JobIn(_Request):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"volume_id": _EXAMPLE_CT, "kind": "predict", "seeds": [{"id": "N01", "ras": [-31.5, 12.0, 104.25]}],
         "options": {"uncertainty": True}},
        {"volume_id": _EXAMPLE_CT, "kind": "refine", "prompts": {"coordinate_system": "RAS", "nodes": {
            "N01": {"seed": [-31.5, 12.0, 104.25], "clicks": [{"point": [-29.0, 12.0, 104.25], "positive": False}]}}}},
    ]})
    volume_id: Annotated[str, Field(min_length=1, max_length=200)]
    kind: Literal[KINDS]  # type: ignore[valid-type]
    model: str | None = Field(None, description="a model name of GET /v1/health; null: the default")
    seeds: list[SeedIn] = Field([], description="predict; refine, follow_up: optional (follow_up: nodes new there)")
    masks: list[NodeMaskIn] = Field([], description="classify: the masks, used as they are; "
                                                    "follow_up: the baseline nodes, on the baseline CT")
    baseline_volume_id: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="follow_up: the baseline CT (uploaded like any CT); volume_id is the follow-up CT")
    prompts: PromptsDocument | None = Field(None, description="refine: per node its seed, line, box, clicks")
    options: JobOptions = JobOptions()


# an absolute path on the server's own system (the route refuses any other with 400)
ABSOLUTE_PATH_PATTERN = r"^([A-Za-z]:[\\/]|\\\\)" if os.name == "nt" else "^/"


class FromFileIn(_Request):
    path: Annotated[str, Field(min_length=1, json_schema_extra={"pattern": ABSOLUTE_PATH_PATTERN},
                               description="absolute path of a CT file or DICOM folder on the server")]


# --- answers ------------------------------------------------------------------------------------
class ModelOut(BaseModel):
    name: str
    model_id: str
    weights_sha256: str
    default: bool


class JobCounts(BaseModel):
    submitted: int
    queued: int
    running: int
    finished: int
    volume_bytes: int


class HealthOut(BaseModel):
    api_version: int
    status: Literal["ok"]
    model_id: str
    weights_sha256: str
    device: str
    models: list[ModelOut]
    max_upload_bytes: int
    from_file: bool
    jobs: JobCounts


class VolumeOut(BaseModel):
    volume_id: str
    shape: Annotated[list[int], Field(min_length=3, max_length=3, description="k, j, i")]


class JobAccepted(BaseModel):
    job_id: str
    state: JobState
    ignored_options: list[str]


class JobCancelled(BaseModel):
    job_id: str
    state: JobState


class Progress(BaseModel):
    stage: str
    done: int
    total: int


class ModelIdentityOut(BaseModel):
    model_id: str
    weights_sha256: str


def _result_field(f: dataclasses.Field):
    """NodeResultJSON's type of one NodeResult field, as protocol.result_to_json writes it."""
    special = {"mask": str, "model": ModelIdentityOut | None, "extra": dict[str, Any],
               "seed_ras": list[float | None], "bbox_start_kji": list[int], "bbox_stop_kji": list[int]}
    kind = special.get(f.name, {"float": float | None, "int": int, "str": str}.get(str(f.type), Any))
    return kind, ...


# every NodeResult field by name (NaN -> null): a field added to NodeResult joins the schema
NodeResultOut = create_model("NodeResultOut", **{f.name: _result_field(f) for f in dataclasses.fields(NodeResult)})


class FollowUpOut(BaseModel):
    """What a finished follow_up job adds to its results (the follow-up nodes)."""

    nodes: list[dict[str, Any]] = Field(description="per node the row of the follow-up nodes.csv")
    response: dict[str, Any] = Field(description="as response.json: the suggested RECIST 1.1 nodal response")
    registration: dict[str, Any] = Field(description="the registration's stages and metrics")
    baseline: list[NodeResultOut] = Field(description="the baseline nodes as measured")  # type: ignore[valid-type]


class JobOut(BaseModel):
    job_id: str
    state: JobState
    kind: str
    model: str
    volume_id: str
    progress: Progress
    queue_position: int | None = Field(description="0 = next; null unless queued")
    error: str | None
    results: list[NodeResultOut] | None  # type: ignore[valid-type]
    follow_up: FollowUpOut | None = Field(None, description="follow_up jobs: both time points and the response")
    ignored_options: list[str]
    submitted_at: float
    started_at: float | None
    finished_at: float | None
