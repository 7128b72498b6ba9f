"""The inference server's HTTP app (FastAPI) over an InferenceService.

`create_app` only assembles it: the service and the settings on the app (dependencies.py), the
guard around it (guard_middleware.py: token, one-line 500s, an access log without patient data),
one-line JSON errors (http_errors.py), the routes of docs/server-api.md (routes.py) and their
OpenAPI document at /openapi.json (openapi_schema.py; no interactive docs pages).
"""

from __future__ import annotations

from fastapi import FastAPI

from . import protocol
from .dependencies import ServerSettings
from .guard_middleware import GuardMiddleware
from .http_errors import TOKEN_REFUSED, add_error_handlers
from .inference_service import InferenceService
from .openapi_schema import install_openapi
from .routes import router

OPENAPI_PATH = "/openapi.json"


def create_app(service: InferenceService, *, token: str | None = None, max_upload_bytes: int = 2 << 30,
               allow_from_file: bool = True) -> FastAPI:
    """The API over `service`. token: every request needs it as a Bearer token (None: none asked).
    allow_from_file: only for a server bound to loopback."""
    app = FastAPI(title="LymphNodeMTL inference server", version=str(protocol.API_VERSION),
                  description="Lymph-node segmentation and metastasis probability from seeds on a CT; "
                              "see docs/server-api.md.",
                  docs_url=None, redoc_url=None, openapi_url=OPENAPI_PATH)
    app.state.service = service
    app.state.settings = ServerSettings(max_upload_bytes, allow_from_file)
    app.add_middleware(GuardMiddleware, token=token)
    add_error_handlers(app)
    app.include_router(router, responses=TOKEN_REFUSED if token else None)
    # every route that can answer, with its path and methods (a 405's Allow, the schema's tests)
    app.state.served_routes = [r for r in (*app.router.routes, *router.routes) if hasattr(r, "path_regex")]
    install_openapi(app, token_required=token is not None)
    return app
