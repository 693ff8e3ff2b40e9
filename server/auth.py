"""Pure-ASGI middleware: API-key check and request ids.

Pure ASGI (not `BaseHTTPMiddleware`) so streaming responses and `http.disconnect` pass through
untouched: disconnect-triggered aborts depend on it.
"""
from __future__ import annotations

import hashlib
import hmac
import uuid
from typing import Optional

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import unauthorized

# Paths that need the key; /health, /metrics, /version stay open for probes and scrapers.
PROTECTED_PREFIXES = ("/v1/", "/tokenize", "/detokenize")


def route_path(scope: Scope) -> str:
    """The path the app routes: without --root-path's prefix when the request carries it (a
    request may come with or without it, as Starlette routes both)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):][:1] in ("", "/"):
        return path[len(root):]
    return path


class APIKeyMiddleware:
    """Rejects protected requests whose `Authorization: Bearer <key>` is missing or wrong."""

    def __init__(self, app: ASGIApp, api_key: Optional[str]):
        self.app = app
        # Digests have one length, so the comparison time does not even reveal the key's length.
        self._key = hashlib.sha256(api_key.encode()).digest() if api_key else None

    def _authorized(self, scope: Scope) -> bool:
        header = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        # Always compare (constant time), even for a malformed header.
        ok = hmac.compare_digest(hashlib.sha256(token.strip()).digest(), self._key or b"")
        return ok and scheme.lower() == b"bearer"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self._key is not None and scope["type"] == "http" and scope.get("method") != "OPTIONS"
                and route_path(scope).startswith(PROTECTED_PREFIXES)
                and not self._authorized(scope)):
            await unauthorized().to_response()(scope, receive, send)
            return
        await self.app(scope, receive, send)


class RequestIdMiddleware:
    """Gives every request an id (client's X-Request-Id or a fresh one), echoed in the reply."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                rid = value.decode("latin-1")[:128]
        rid = rid or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        await self.app(scope, receive, send_with_id)
