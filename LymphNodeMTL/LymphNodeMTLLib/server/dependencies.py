"""What a route gets besides its request: the server's InferenceService and its settings, both set
on the app by `create_app` (app.py). A route names them as parameters:

    @router.get("/v1/example")
    def example(service: Service, settings: Settings): ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from .inference_service import InferenceService


@dataclass(frozen=True)
class ServerSettings:
    """max_upload_bytes: the largest CT upload. allow_from_file: reading CTs from the server's own
    files is allowed (only for a server bound to loopback)."""

    max_upload_bytes: int = 2 << 30
    allow_from_file: bool = True


async def get_service(request: Request) -> InferenceService:  # async: no thread hop per request
    return request.app.state.service


async def get_settings(request: Request) -> ServerSettings:
    return request.app.state.settings


Service = Annotated[InferenceService, Depends(get_service)]
Settings = Annotated[ServerSettings, Depends(get_settings)]
