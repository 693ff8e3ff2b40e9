"""`EngineClient`: what the serving layer (server/serving_*.py) needs from an engine, whatever runs
it. `server.engine_client.AsyncEngineClient` implements it over a core transport;
`server.data_parallel` over several engine cores; tests use fakes.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Optional

from engine.sampling_params import SamplingParams
from server.request_stream import RequestStream


class EngineClient(ABC):
    """What the serving layer needs from an engine, whatever runs it."""

    model_config: Any
    tokenizer: Any

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def shutdown(self) -> None: ...

    @abstractmethod
    async def add_request(self, request_id: str, prompt: Optional[str],
                          prompt_token_ids: Optional[list[int]],
                          params: SamplingParams,
                          add_special_tokens: bool = True) -> "RequestStream":
        """Validate, tokenize (off the event loop) and submit one request; iterate the returned
        stream for its outputs.

        Raises ValueError (invalid or over-long request, before anything is allocated) or
        EngineDeadError. The caller must `close()` the stream when done with it (in a
        `finally`): closing an unfinished stream aborts the request.
        """

    @abstractmethod
    def abort(self, request_id: str) -> None: ...

    @abstractmethod
    async def tokenize(self, text: str, add_special_tokens: bool = True,
                       check_length: bool = False, field: str = "prompt") -> list[int]:
        """Token ids of `text` (in a worker thread); with `check_length`, text that cannot fit
        the context is a ValueError naming `field`, refused as early as possible."""

    @abstractmethod
    def default_max_tokens(self, prompt_len: int, num_seqs: int) -> Optional[int]:
        """max_tokens for a request that gives none (chat): as many as context and pool allow."""

    @abstractmethod
    async def get_stats(self) -> dict: ...

    @abstractmethod
    def health_problem(self) -> Optional[str]:
        """Why the engine cannot serve now (dead, restarting, stuck in a step), or None."""

    def is_healthy(self) -> bool:
        return self.health_problem() is None

    @abstractmethod
    def num_waiting(self, adding: int = 0) -> int:
        """Engine requests (one per prompt) that would wait for the scheduler if `adding` more
        were submitted now: submitted but not yet scheduled, beyond the free batch slots."""

    def reserve(self, num_prompts: int) -> None:
        """Count prompts admitted past the queue limit that are still being tokenized (they
        wait too); negative to release."""

    def fail_in_flight(self, error: BaseException) -> None:
        """End every in-flight request with `error` (shutdown timeout)."""

    @property
    def num_in_flight(self) -> int:
        return 0
