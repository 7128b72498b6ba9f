"""Every refusal of the HTTP layer as one JSON line, `{"error": "..."}`, with the right status, and
the statuses each route answers, as its OpenAPI `responses` (`documented`)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.errors import InputError
from .api_models import ErrorOut
from .inference_service import NotFound

_ROUTING_MESSAGES = {404: "no such route; see docs/server-api.md", 405: "method not allowed on this route"}

# What each refusal means, as the schema says it (docs/server-api.md, "Statuses").
STATUS_MEANINGS = {
    400: "malformed body or headers",
    401: "missing or wrong token",
    403: "not allowed on this server",
    404: "unknown model, CT or job",
    413: "larger than the server's upload limit",
    422: "invalid fields, or input the engine would refuse",
    500: "server fault (its traceback, without the message, is in the server's log)",
}
# answered by any route: a fault; and, on a server with a token, a request without it
ANY_ROUTE = (500,)
TOKEN_REFUSED = {401: {"model": ErrorOut, "description": STATUS_MEANINGS[401],
                       "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}}}}


def documented(*statuses: int, body: bool = True) -> dict:
    """A route's `responses=`: the one-line error body for each status it refuses with (no body:
    the answers to HEAD)."""
    return {s: ({"model": ErrorOut} if body else {}) | {"description": STATUS_MEANINGS[s]}
            for s in (*statuses, *ANY_ROUTE)}


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


def allowed_methods(routes, path: str) -> str:
    """The Allow header of a 405: every method some route serves on this path (RFC 9110)."""
    methods = {m for r in routes if r.path_regex.fullmatch(path) for m in (getattr(r, "methods", None) or ())}
    return ", ".join(sorted(methods))


def add_error_handlers(app: FastAPI) -> None:
    """Invalid fields 422 (or 400), routing errors 404/405, unknown names 404, refused input 422."""

    @app.exception_handler(RequestValidationError)
    async def on_validation(request, exc):
        return error_response(*validation_line(exc))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request, exc):
        own = isinstance(exc.detail, str) and exc.status_code not in _ROUTING_MESSAGES
        detail = (exc.detail if own else None) or _ROUTING_MESSAGES.get(exc.status_code, "request refused")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request.app.state.served_routes, request.url.path)
        return error_response(exc.status_code, detail, headers)

    @app.exception_handler(NotFound)
    async def on_not_found(request, exc):
        return error_response(404, str(exc))

    @app.exception_handler(InputError)
    async def on_input(request, exc):
        return error_response(422, str(exc))
