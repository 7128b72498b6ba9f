"""Every refusal of the HTTP layer as one JSON line, `{"error": "..."}`, with the right status."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.errors import InputError
from .inference_service import NotFound

_ROUTING_MESSAGES = {404: "no such route; see docs/server-api.md", 405: "method not allowed on this route"}


def error_response(status: int, message: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def validation_line(exc: RequestValidationError) -> tuple[int, str]:
    """FastAPI's list of validation errors as one line (400 for a body that is not JSON at all)."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "the request body is not valid JSON; send a JSON object"
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return 422, f"{where}: {first.get('msg', 'invalid value')}{more}; see docs/server-api.md"


def add_error_handlers(app: FastAPI) -> None:
    """Invalid fields 422 (or 400), routing errors 404/405, unknown names 404, refused input 422."""

    @app.exception_handler(RequestValidationError)
    async def on_validation(request, exc):
        return error_response(*validation_line(exc))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request, exc):
        own = isinstance(exc.detail, str) and exc.status_code not in _ROUTING_MESSAGES
        detail = (exc.detail if own else None) or _ROUTING_MESSAGES.get(exc.status_code, "request refused")
        return error_response(exc.status_code, detail)

    @app.exception_handler(NotFound)
    async def on_not_found(request, exc):
        return error_response(404, str(exc))

    @app.exception_handler(InputError)
    async def on_input(request, exc):
        return error_response(422, str(exc))
