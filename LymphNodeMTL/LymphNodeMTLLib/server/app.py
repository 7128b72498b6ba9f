"""The HTTP layer of the inference server (FastAPI): routes of docs/server-api.md over an InferenceService.

Thin on purpose: it checks the token, bounds uploads, turns the service's errors into one-line
JSON errors with the right status, and moves every heavy step (hashing a CT, reading a file, the
engine itself) off the event loop. The access log names the route template, never the ids or
paths in a request, so no patient data reaches the log.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import traceback
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.case import Seed
from ..core.errors import InputError
from . import protocol
from .inference_service import InferenceService, NotFound

log = logging.getLogger("lymphnode_mtl.server")

MAX_WAIT_S = 30.0
VOLUME_ID = re.compile("[0-9a-f]{64}")  # sha256 hex, as protocol.volume_id gives it  # longest long-poll of GET /v1/jobs/{id}?wait=S


class SeedIn(BaseModel):
    id: Annotated[str, Field(min_length=1, max_length=200)]
    ras: Annotated[list[float], Field(min_length=3, max_length=3)]


class JobIn(BaseModel):
    volume_id: Annotated[str, Field(min_length=1, max_length=200)]
    kind: Literal["predict", "classify"]
    model: str | None = None
    seeds: list[SeedIn] = []
    masks: list[dict] = []
    options: dict = {}


class FromFileIn(BaseModel):
    path: Annotated[str, Field(min_length=1)]


def _error(status: int, message: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def _validation_line(exc: RequestValidationError) -> tuple[int, str]:
    """FastAPI's list of validation errors as one line (400 for a body that is not JSON at all)."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "the request body is not valid JSON; send a JSON object"
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return 422, f"{where}: {first.get('msg', 'invalid value')}{more}; see docs/server-api.md"


class GuardMiddleware:
    """Token check, one-line 500s and the access log, around the whole app (plain ASGI)."""

    def __init__(self, app, token: str | None):
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = {"code": 500, "started": False}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        try:
            if self.token is not None and not self._authorised(scope):
                # refused before the body is read or anything runs
                await _error(401, "missing or wrong token; send Authorization: Bearer <token>",
                             {"WWW-Authenticate": "Bearer"})(scope, receive, send_status)
                return
            await self.app(scope, receive, send_status)
        except Exception as e:
            log.error("unhandled %s\n%s", type(e).__name__, "".join(traceback.format_tb(e.__traceback__)))
            if not status["started"]:
                await _error(500, f"internal server error ({type(e).__name__}); see the server log")(
                    scope, receive, send_status)
        finally:
            route = scope.get("route")
            log.info("%s %s %d %.1f ms", scope["method"], getattr(route, "path", "-"), status["code"],
                     1000 * (time.perf_counter() - t0))

    def _authorised(self, scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)
        return False


def create_app(service: InferenceService, *, token: str | None = None, max_upload_bytes: int = 2 << 30,
               allow_from_file: bool = True, device: str = "") -> FastAPI:
    """The API over `service`. `allow_from_file`: only for a server bound to loopback."""
    app = FastAPI(title="LymphNodeMTL inference server", version=str(protocol.API_VERSION),
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(GuardMiddleware, token=token)

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request, exc):
        return _error(*_validation_line(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request, exc):
        messages = {404: "no such route; see docs/server-api.md", 405: "method not allowed on this route"}
        detail = exc.detail if isinstance(exc.detail, str) and exc.status_code not in messages else None
        return _error(exc.status_code, detail or messages.get(exc.status_code, "request refused"))

    @app.exception_handler(NotFound)
    async def _on_not_found(request, exc):
        return _error(404, str(exc))

    @app.exception_handler(InputError)
    async def _on_input(request, exc):
        return _error(422, str(exc))

    @app.get("/v1/health")
    def health():
        name, engine = service.engine(None)
        return {
            "api_version": protocol.API_VERSION,
            "status": "ok",
            "model_id": engine.model_id,
            "weights_sha256": engine.model.weights_sha256,
            "device": str(engine.device),
            "models": service.models(),
            "max_upload_bytes": max_upload_bytes,
            "from_file": allow_from_file,
            "jobs": service.counts(),
        }

    @app.head("/v1/volumes/{volume_id}")
    def has_volume(volume_id: str):
        return Response(status_code=200 if service.has_volume(volume_id) else 404)

    @app.put("/v1/volumes/{volume_id}", status_code=201)
    async def upload_volume(volume_id: str, request: Request):
        h = request.headers
        try:
            shape, dtype, matrix = protocol.parse_volume_headers(
                h.get(protocol.HEADER_SHAPE), h.get(protocol.HEADER_DTYPE), h.get(protocol.HEADER_IJK_TO_RAS))
        except InputError as e:
            return _error(400, str(e))
        length = h.get("content-length")
        too_big = _error(413, f"the CT is larger than this server's upload limit of "
                              f"{max_upload_bytes / 2**20:.0f} MiB; ask for a larger --max-upload-mb")
        if length is not None and length.isdigit() and int(length) > max_upload_bytes:
            return too_big  # refused before reading the body
        expected = int(np.prod(shape)) * dtype.itemsize
        if expected > max_upload_bytes:
            return too_big  # by its declared shape, before anything is read or allocated
        body = bytearray(expected)  # filled in place: no regrowing copies of a large CT
        view, size = memoryview(body), 0
        hasher = protocol.volume_hasher(dtype.name, shape, matrix)  # hashed as it arrives
        async for chunk in request.stream():
            if size + len(chunk) > max_upload_bytes:
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
            return _error(400, str(e))
        return {"volume_id": vid, "shape": list(shape)}

    @app.post("/v1/volumes/{volume_id}/from-file", status_code=201)
    async def volume_from_file(volume_id: str, body: FromFileIn):
        if not allow_from_file:
            return _error(403, "reading files is only allowed on a server bound to loopback; upload the CT (PUT)")
        path = Path(body.path)
        if not path.is_absolute():
            return _error(400, "the path must be absolute")
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
            return _error(400, str(e))
        return {"volume_id": vid, "shape": shape}

    @app.post("/v1/jobs", status_code=202)
    async def submit_job(body: JobIn):
        def submit():
            masks = [protocol.mask_from_json(m) for m in body.masks] if body.kind == "classify" else []
            seeds = [Seed(s.id, tuple(s.ras)) for s in body.seeds] if body.kind == "predict" else []
            return service.submit(body.kind, body.volume_id, body.model, seeds, masks, body.options)

        job = await run_in_threadpool(submit)
        return {"job_id": job.job_id, "state": job.state, "ignored_options": job.ignored_options}

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str, wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0.0):
        job = service.job(job_id)
        if wait > 0:
            # long poll: answer as soon as the job finishes, without holding a thread meanwhile
            deadline = time.monotonic() + wait
            while job.state not in ("done", "failed", "cancelled") and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            job = service.job(job_id)
        return Response(json.dumps(job.to_json(), allow_nan=False), media_type="application/json")

    @app.delete("/v1/jobs/{job_id}")
    def cancel_job(job_id: str):
        job = service.cancel(job_id)
        return {"job_id": job.job_id, "state": job.state}

    return app
