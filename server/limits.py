"""Pure-ASGI middleware bounding what a request body may be before any handler sees it.

- A body over `max_body_bytes` is a 413, decided from Content-Length when given and otherwise
  while reading (never more than the limit is buffered), so a 50 MB upload costs neither memory
  nor event-loop time.
- A body whose Content-Type is present and not JSON is a 415 (every endpoint takes JSON; a
  missing Content-Type is read as JSON).

The buffered body is replayed to the app; after it, `receive` is the server's again, so
disconnect detection (`http.disconnect`) keeps working.
"""
from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import body_too_large, unsupported_media_type

_BODY_METHODS = (b"POST", b"PUT", b"PATCH")


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/")
                                           and media.endswith("+json"))


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method", "").encode() not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        if content_type and not _is_json(content_type):
            await unsupported_media_type(content_type).to_response()(scope, receive, send)
            return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await body_too_large(self.max_body_bytes).to_response()(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left mid-upload: nothing to answer
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body_bytes:
                await body_too_large(self.max_body_bytes).to_response()(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
