"""The server's OpenAPI document, as `/openapi.json` serves it: FastAPI's, made from the routes'
models and `responses=` (routes.py, api_models.py, http_errors.py), plus what FastAPI cannot see.

- The bearer token, when the server has one: the guard (guard_middleware.py) asks for it on every
  request, outside FastAPI's dependencies, so its scheme is declared here (create_app adds its 401
  to every route).
- FastAPI's own 422 body (`HTTPValidationError`) is never sent: this server's validation errors
  are one line (http_errors.py), so a route that declares no 422 of its own answers none.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

FASTAPI_422_SCHEMAS = ("HTTPValidationError", "ValidationError")


def install_openapi(app: FastAPI, token_required: bool) -> None:
    """Make `app.openapi()` (and so `/openapi.json`) give this server's document, built once."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = build_schema(app, token_required)
        return app.openapi_schema

    app.openapi = openapi


def build_schema(app: FastAPI, token_required: bool) -> dict:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation["responses"]
            fastapi_422 = responses.get("422", {}).get("content", {}).get("application/json", {})
            if fastapi_422.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                del responses["422"]
    components = schema.setdefault("components", {})
    for name in FASTAPI_422_SCHEMAS:
        components.get("schemas", {}).pop(name, None)
    if token_required:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
    return schema

