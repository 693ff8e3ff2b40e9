"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` for every failure.

`APIError` carries an HTTP status and the error object; the handlers installed by
`install_exception_handlers` turn it, FastAPI's validation errors (422 by default, 400 here with
`param` naming the offending field), Starlette's HTTP errors and unexpected exceptions (500, logged
with the request id) into that shape.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("pagedserve.server")

# ValueError messages from SamplingParams / EngineArgs start with "<field>: ".
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*): (.*)$", re.S)
_CONTEXT_MARKER = "maximum context length"


class APIError(Exception):
    """An error the client should see as an OpenAI error object with `status_code`."""

    def __init__(self, status_code: int, message: str, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str | int] = None,
                 headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def to_response(self) -> JSONResponse:
        return error_response(self.status_code, self.message, self.type, self.param, self.code,
                              self.headers)


class EngineDeadError(RuntimeError):
    """The engine core process is gone; nothing more can be generated."""


def error_body(message: str, type: str, param: Optional[str] = None,
               code: Optional[str | int] = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(status_code: int, message: str, type: str, param: Optional[str] = None,
                   code: Optional[str | int] = None,
                   headers: Optional[dict[str, str]] = None) -> JSONResponse:
    return JSONResponse(error_body(message, type, param, code), status_code=status_code,
                        headers=headers)


def bad_request(message: str, param: Optional[str] = None, code: Optional[str] = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def from_value_error(exc: ValueError, default_param: Optional[str] = None) -> APIError:
    """A 400 from an engine-side `ValueError`, naming the field its message starts with."""
    text = str(exc)
    m = _FIELD_PREFIX.match(text)
    if _CONTEXT_MARKER in text:
        return bad_request(text, m.group(1) if m else default_param, "context_length_exceeded")
    if m:
        return bad_request(text, m.group(1))
    return bad_request(text, default_param)


def model_not_found(name: str) -> APIError:
    return APIError(404, f"The model `{name}` does not exist.", "invalid_request_error", "model",
                    "model_not_found")


def unauthorized() -> APIError:
    return APIError(401, "Incorrect or missing API key. Pass it as 'Authorization: Bearer KEY'.",
                    "invalid_request_error", None, "invalid_api_key",
                    headers={"WWW-Authenticate": 'Bearer realm="pagedserve"'})


def shutting_down() -> APIError:
    """What requests still running at the shutdown timeout end with (an SSE error event)."""
    return APIError(503, "server shutting down", "service_unavailable", None,
                    "server_shutting_down")


def body_too_large(limit: int) -> APIError:
    return APIError(413, f"The request body exceeds {limit} bytes (--max-request-body-bytes).",
                    "invalid_request_error", None, "request_too_large")


def unsupported_media_type(content_type: str) -> APIError:
    return APIError(415, f"Content-Type must be application/json, got {content_type!r}.",
                    "invalid_request_error", None, "unsupported_media_type")


def too_many_requests(queue_len: int, limit: int, retry_after: int = 1) -> APIError:
    return APIError(429, f"The server is overloaded: {queue_len} requests are waiting "
                         f"(limit {limit}). Retry later.", "rate_limit_exceeded", None,
                    "rate_limit_exceeded", headers={"Retry-After": str(retry_after)})


def engine_unavailable(detail: str = "") -> APIError:
    msg = "The engine is not available" + (f": {detail}" if detail else ".")
    return APIError(503, msg, "service_unavailable", None, "engine_dead")


def _loc_to_param(loc: tuple) -> Optional[str]:
    """('body', 'messages', 0, 'content') -> 'messages[0].content'."""
    parts = [p for p in loc if p not in ("body", "query", "path")]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in ("str", "int", "list[str]", "list[int]", "list[list[int]]") or "[" in str(p) \
                or str(p)[:1].isupper():
            continue  # pydantic names union members (types, model classes) in the location
        else:
            out += ("." if out else "") + str(p)
    return out or None


def _validation_message(err: dict) -> tuple[str, Optional[str]]:
    if err.get("type") == "json_invalid":
        ctx = err.get("ctx") or {}
        return f"Malformed JSON body: {ctx.get('error', err.get('msg', 'invalid JSON'))}", None
    param = _loc_to_param(tuple(err.get("loc", ())))
    msg = err.get("msg", "invalid value")
    if param is None and err.get("type") == "model_attributes_type":
        return "The request body must be a JSON object.", None
    if err.get("type") == "extra_forbidden":
        from server.protocol import IGNORED_FIELDS
        return (f"{param}: unknown field: pagedserve does not implement it, and rejects it rather "
                f"than ignore it silently (fields accepted and ignored: "
                f"{', '.join(IGNORED_FIELDS)})"), param
    return (f"{param}: {msg}" if param else msg), param


def install_exception_handlers(app: FastAPI) -> None:
    """Route every error the app can raise into the OpenAI error shape."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.to_response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        # The deepest location is the most specific (a union reports each member's failure).
        worst = max(errors, key=lambda e: len(e.get("loc", ()))) if errors else None
        message, param = _validation_message(worst) if worst else ("Invalid request", None)
        return error_response(400, message, "invalid_request_error", param, None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(exc.status_code, detail, kind, None, None,
                              getattr(exc, "headers", None))

    @app.exception_handler(EngineDeadError)
    async def _dead(request: Request, exc: EngineDeadError) -> JSONResponse:
        return engine_unavailable(str(exc)).to_response()

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        rid = request.headers.get("x-request-id") or getattr(request.state, "request_id", "?")
        logger.exception("Internal error in %s %s (request id %s)", request.method,
                         request.url.path, rid)
        return error_response(500, f"Internal server error (request id {rid}).", "server_error",
                              None, "internal_error")
