"""The routes of docs/server-api.md over the server's InferenceService.

Thin on purpose: each route bounds and parses its request, calls the service, and moves every
heavy step (hashing a CT, reading a file, the engine itself) off the event loop. Refusals are
one-line JSON errors (http_errors.py); an InputError or NotFound a route lets through becomes 422
or 404. A new route is one more decorated function here, taking `service: Service` and
`settings: Settings` where it needs them (dependencies.py), with its bodies as models
(api_models.py) and its refusals as `responses=documented(...)`: that is all /openapi.json needs.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Path as PathParam, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ..core.case import Seed
from ..core.node_prompts import merge_seeds_and_prompts
from ..io.prompt_reader import prompts_from_document
from ..core.errors import InputError
from . import protocol
from .api_models import (
    VOLUME_ID_PATTERN,
    FromFileIn,
    HealthOut,
    JobAccepted,
    JobCancelled,
    JobIn,
    JobOut,
    VolumeOut,
)
from .dependencies import Service, Settings
from .http_errors import documented, error_response

MAX_WAIT_S = 30.0  # longest long poll of GET /v1/jobs/{id}?wait=S
VOLUME_ID = re.compile(VOLUME_ID_PATTERN.strip("^$"))

router = APIRouter(generate_unique_id_function=lambda route: route.name)  # operationId = the function's name


def _links(status: int, field: str, *operations: str) -> dict:
    """OpenAPI links: the operations that take this answer's `field` as their path parameter."""
    return {status: {"links": {op: {"operationId": op, "parameters": {field: f"$response.body#/{field}"}}
                               for op in operations}}}


# The upload's body and headers, which the route reads itself (streamed, hashed as they arrive).
UPLOAD_REQUEST = {
    "requestBody": {"required": True, "description": "the CT's samples, C order [k, j, i], little-endian",
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
    "parameters": [{"name": name, "in": "header", "required": True, "schema": {"type": "string", "pattern": pattern}}
                   for name, pattern in protocol.HEADER_PATTERNS.items()],
}


@router.get("/v1/health", response_model=HealthOut, responses=documented())
def health(service: Service, settings: Settings):
    name, engine = service.engine(None)
    return HealthOut(
        api_version=protocol.API_VERSION,
        status="ok",
        model_id=engine.model_id,
        weights_sha256=engine.model.weights_sha256,
        device=str(engine.device),
        models=service.models(),
        max_upload_bytes=settings.max_upload_bytes,
        from_file=settings.allow_from_file,
        jobs=service.counts(),
    )


@router.head("/v1/volumes/{volume_id}", response_class=Response, responses=documented(404, body=False))
def has_volume(volume_id: str, service: Service):
    return Response(status_code=200 if service.has_volume(volume_id) else 404)


@router.put("/v1/volumes/{volume_id}", status_code=201, response_model=VolumeOut,
            responses=documented(400, 413, 422) | _links(201, "volume_id", "has_volume"),
            openapi_extra=UPLOAD_REQUEST)
async def upload_volume(volume_id: Annotated[str, PathParam(pattern=VOLUME_ID_PATTERN)], request: Request,
                        service: Service, settings: Settings):
    """The server's CT boundary: the service checks the CT once as it stores it."""
    limit = settings.max_upload_bytes
    h = request.headers
    try:
        shape, dtype, matrix = protocol.parse_volume_headers(
            h.get(protocol.HEADER_SHAPE), h.get(protocol.HEADER_DTYPE), h.get(protocol.HEADER_IJK_TO_RAS))
    except InputError as e:
        return error_response(400, str(e))
    length = h.get("content-length")
    too_big = error_response(413, f"the CT is larger than this server's upload limit of "
                                  f"{limit / 2**20:.0f} MiB; ask for a larger --max-upload-mb")
    if length is not None and length.isdigit() and int(length) > limit:
        return too_big  # refused before reading the body
    expected = math.prod(shape) * dtype.itemsize
    if expected > limit:
        return too_big  # by its declared shape, before anything is read or allocated
    body = bytearray(expected)  # filled in place: no regrowing copies of a large CT
    view, size = memoryview(body), 0
    hasher = protocol.volume_hasher(dtype.name, shape, matrix)  # hashed as it arrives
    async for chunk in request.stream():
        if size + len(chunk) > limit:
            return too_big
        if size + len(chunk) <= expected:
            view[size:size + len(chunk)] = chunk
        size += len(chunk)
        hasher.update(chunk)
    view.release()
    try:
        if size != expected:
            raise InputError(f"the upload holds {size} bytes but shape {','.join(map(str, shape))} "
                             f"of {dtype.name} needs {expected}; send the whole array")
        image = protocol.array_from_bytes(body, shape, dtype)  # a view: no second copy
        vid = await run_in_threadpool(service.add_volume, image, matrix, volume_id,
                                      hashed_id=hasher.hexdigest())
    except InputError as e:
        return error_response(400, str(e))
    return VolumeOut(volume_id=vid, shape=list(shape))


@router.post("/v1/volumes/{volume_id}/from-file", status_code=201, response_model=VolumeOut,
             responses=documented(400, 403, 422) | _links(201, "volume_id", "has_volume"))
async def volume_from_file(volume_id: str, body: FromFileIn, service: Service, settings: Settings):
    if not settings.allow_from_file:
        return error_response(403, "reading files is only allowed on a server bound to loopback; "
                                   "upload the CT (PUT)")
    path = Path(body.path)
    if not path.is_absolute():
        return error_response(400, "the path must be absolute")
    from ..io.volume_reader import read_volume

    def read_and_store():
        image, geometry, _ = read_volume(path)
        # stored by its own hash, and by the id the client used if that differs (and is one)
        alias = volume_id if VOLUME_ID.fullmatch(volume_id) else None
        vid = service.add_volume(image, geometry.ijk_to_ras, also_known_as=alias)
        return vid, list(image.shape)

    try:
        vid, shape = await run_in_threadpool(read_and_store)
    except InputError as e:
        return error_response(400, str(e))
    except OSError as e:  # a path the system itself refuses (a name too long, no permission)
        return error_response(400, f"cannot read that path ({e.strerror or type(e).__name__}); "
                                   "check the path")
    return VolumeOut(volume_id=vid, shape=shape)


@router.post("/v1/jobs", status_code=202, response_model=JobAccepted,
             responses=documented(400, 404, 422) | _links(202, "job_id", "get_job", "cancel_job"))
async def submit_job(body: JobIn, service: Service):
    """The server's seed boundary: the service validates the seeds once, at submit."""

    def submit():
        service.engine(body.model)  # unknown names (404) before what is wrong with the rest (422)
        service.volumes.get(body.volume_id)
        if body.baseline_volume_id:
            service.volumes.get(body.baseline_volume_id)
        masks = ([protocol.mask_from_json(m.model_dump()) for m in body.masks]
                 if body.kind in ("classify", "follow_up") else [])
        seeds = [Seed(s.id, tuple(s.ras)) for s in body.seeds] if body.kind != "classify" else []
        prompts = {}
        if body.kind == "refine":
            document = body.prompts.model_dump(exclude_unset=True) if body.prompts else None
            seeds, prompts = merge_seeds_and_prompts(seeds, prompts_from_document(document,
                                                                                  "the refine job's prompts"))
        options = body.options.model_dump(exclude_unset=True)
        return service.submit(body.kind, body.volume_id, body.model, seeds, masks, options, prompts,
                              body.baseline_volume_id)

    job = await run_in_threadpool(submit)
    return JobAccepted(job_id=job.job_id, state=job.state, ignored_options=job.ignored_options)


# The answer is written as the service keeps it (no model round trip on every poll); JobOut is
# what it holds, and the tests hold it to that.
@router.get("/v1/jobs/{job_id}", response_model=JobOut, responses=documented(404, 422))
async def get_job(job_id: str, service: Service, wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0.0):
    job = service.job(job_id)
    if wait > 0:
        # long poll: answer as soon as the job finishes, without holding a thread meanwhile
        deadline = time.monotonic() + wait
        while job.state not in ("done", "failed", "cancelled") and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        job = service.job(job_id)
    return Response(json.dumps(job.to_json(), allow_nan=False), media_type="application/json")


@router.delete("/v1/jobs/{job_id}", response_model=JobCancelled, responses=documented(404))
def cancel_job(job_id: str, service: Service):
    job = service.cancel(job_id)
    return JobCancelled(job_id=job.job_id, state=job.state)
