"""One request's frontend state and the async iterator its handler reads outputs from."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from engine.outputs import RequestOutput

Item = Union[RequestOutput, BaseException]


class Mailbox:
    """A request's outputs on their way to its handler, holding at most one output.

    Outputs are cumulative (each holds every token so far), so a newer one replaces an unread
    one: a client that reads slowly (or not at all) gets the same text in fewer, larger chunks,
    and its request holds one output in memory, not one per step. An error is terminal and is
    delivered after the output it follows.
    """

    def __init__(self) -> None:
        self._output: Optional[RequestOutput] = None
        self._error: Optional[BaseException] = None
        self._ready = asyncio.Event()

    def put_nowait(self, item: Item) -> None:
        if isinstance(item, BaseException):
            if self._error is None:
                self._error = item
        else:
            self._output = item
        self._ready.set()

    def qsize(self) -> int:
        return (self._output is not None) + (self._error is not None)

    async def get(self) -> Item:
        await self._ready.wait()
        item: Item
        if self._output is not None:
            item, self._output = self._output, None
        else:
            assert self._error is not None
            item = self._error  # stays: every later read sees the error too
        if self._error is None:
            self._ready.clear()
        return item


@dataclass
class RequestState:
    """Per-request frontend bookkeeping: its mailbox and latency timestamps."""

    arrival: float
    queue: Mailbox = field(default_factory=Mailbox)
    num_tokens: int = 0
    first_token_time: Optional[float] = None
    last_token_time: Optional[float] = None


class RequestStream:
    """Async iterator over one request's outputs (`RequestOutput`, cumulative per choice)."""

    def __init__(self, client: Any, request_id: str, queue: Mailbox,
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
