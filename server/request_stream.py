"""One request's frontend state and the async iterator its handler reads outputs from."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Optional

from engine.outputs import RequestOutput


@dataclass
class RequestState:
    """Per-request frontend bookkeeping: its output queue and latency timestamps."""

    queue: asyncio.Queue
    arrival: float
    num_tokens: int = 0
    first_token_time: Optional[float] = None
    last_token_time: Optional[float] = None


class RequestStream:
    """Async iterator over one request's outputs (`RequestOutput`, cumulative per choice)."""

    def __init__(self, client: Any, request_id: str, queue: asyncio.Queue,
                 prompt_token_ids: list[int]):
        self.client = client
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self._queue = queue
        self.finished = False

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        if item.finished:
            self.finished = True
        return item

    def close(self) -> None:
        """Abort the request unless it already finished (idempotent)."""
        if not self.finished:
            self.finished = True
            self.client.abort(self.request_id)
