"""`POST /v1/embeddings` (OpenAI shape) over a `PoolingEngine`, with cross-request batching.

Request: `input` (a string, a list of strings, a list of token ids, or a list of such lists),
`model`, `encoding_format` (`float`, or `base64`: little-endian float32 bytes, what the OpenAI
SDK asks for by default), `dimensions` (only where the model is matryoshka, else 400), `user`.
Unknown fields are rejected (400 naming them): none is silently ignored.

Concurrent requests are batched: a single worker drains every request waiting while the previous
batch ran (same `dimensions`) into one forward, up to the engine's token budget.
"""
from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from server.errors import bad_request, from_value_error, model_not_found
from server.protocol import random_id

EmbeddingInput = Union[str, list[str], list[int], list[list[int]]]


class EmbeddingRequest(BaseModel):
    """Strict like the generation requests (server/protocol.py): no unknown field, no coercion."""

    model_config = ConfigDict(extra="forbid", strict=True)

    input: EmbeddingInput
    model: Optional[str] = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(default=None, ge=1)
    user: Optional[str] = None  # accepted for OpenAI compatibility; carries no behaviour


@dataclass
class _Job:
    ids: list[list[int]]
    dimensions: Optional[int]
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def split_input(value: EmbeddingInput) -> list[Union[str, list[int]]]:
    """The request's inputs, one item each (a string or a list of token ids)."""
    if isinstance(value, str):
        return [value]
    if not value:
        raise bad_request("input: must not be empty", "input")
    if all(isinstance(v, int) for v in value):
        return [list(value)]  # type: ignore[arg-type]
    return list(value)  # type: ignore[arg-type]


def encode_vector(vec: np.ndarray, fmt: str) -> Union[list[float], str]:
    if fmt == "base64":
        return base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii")
    return vec.tolist()


class OpenAIServingEmbedding:
    def __init__(self, engine: Any, served_model_names: list[str]):
        self.engine = engine
        self.served_model_names = served_model_names
        self._queue: Optional[asyncio.Queue[_Job]] = None
        self._worker: Optional[asyncio.Task] = None
        self.num_requests = 0
        self.num_prompt_tokens = 0

    def check_model(self, model: Optional[str]) -> None:
        if model is not None and model not in self.served_model_names:
            raise model_not_found(model)

    async def create(self, body: EmbeddingRequest) -> dict[str, Any]:
        self.check_model(body.model)
        items = split_input(body.input)
        try:
            self.engine.pooling.check_dimensions(body.dimensions)
        except ValueError as exc:
            raise from_value_error(exc, "dimensions") from exc
        ids = []
        for i, item in enumerate(items):
            try:
                ids.append(self.engine.tokenize(item, i))
            except ValueError as exc:
                code = "context_length_exceeded" if "maximum context" in str(exc) else None
                raise bad_request(str(exc), f"input[{i}]", code) from exc
        vectors = await self._submit(ids, body.dimensions)
        n_tokens = sum(len(r) for r in ids)
        self.num_requests += 1
        self.num_prompt_tokens += n_tokens
        return {
            "id": random_id("embd"),
            "object": "list",
            "created": int(time.time()),
            "model": body.model or self.served_model_names[0],
            "data": [{"object": "embedding", "index": i,
                      "embedding": encode_vector(vectors[i], body.encoding_format)}
                     for i in range(len(ids))],
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        }

    async def _submit(self, ids: list[list[int]], dimensions: Optional[int]) -> np.ndarray:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run(), name="embedding-worker")
        job = _Job(ids, dimensions)
        self._queue.put_nowait(job)
        return await job.future

    async def _run(self) -> None:
        assert self._queue is not None
        budget = self.engine.max_num_batched_tokens
        while True:
            jobs = [await self._queue.get()]
            tokens = sum(map(len, jobs[0].ids))
            deferred: list[_Job] = []
            while not self._queue.empty():
                job = self._queue.get_nowait()
                size = sum(map(len, job.ids))
                if job.dimensions == jobs[0].dimensions and tokens + size <= budget:
                    jobs.append(job)
                    tokens += size
                else:
                    deferred.append(job)
            for job in deferred:  # next round, in arrival order
                self._queue.put_nowait(job)
            jobs = [j for j in jobs if not j.future.cancelled()]
            if not jobs:
                continue
            flat = [row for j in jobs for row in j.ids]
            try:
                out = await asyncio.to_thread(self.engine.embed_token_ids, flat,
                                              jobs[0].dimensions)
            except Exception as exc:  # one failing batch fails its requests, not the worker
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            arr = out.numpy()
            start = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result(arr[start:start + len(j.ids)])
                start += len(j.ids)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
