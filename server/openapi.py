"""The app's OpenAPI schema as the server really answers: validation errors are 400s in OpenAI's
error shape (server/errors.py), never FastAPI's default 422, so the schema says so."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from server.protocol import ErrorResponse

_ERROR_REF = "#/components/schemas/ErrorResponse"


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": _ERROR_REF}}}}


def install_openapi(app: FastAPI) -> None:
    """Replace every operation's 422 by a 400 with the OpenAI error body."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["ErrorResponse"] = ErrorResponse.model_json_schema(
            ref_template="#/components/schemas/{model}")
        for defs_name, defs in components["ErrorResponse"].pop("$defs", {}).items():
            components.setdefault(defs_name, defs)
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for path in schema.get("paths", {}).values():
            for op in path.values():
                responses = op.get("responses")
                if not isinstance(responses, dict):
                    continue
                if responses.pop("422", None) is not None or "requestBody" in op:
                    responses["400"] = _error_response(
                        "Invalid request: unknown field, wrong type or bad value "
                        "(`error.param` names the field)")
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
