"""The async engine client the HTTP handlers talk to.

`EngineClient` is the interface; `AsyncEngineClient` implements it over a `CoreClient` transport:
`mode="process"` runs the engine core in its own process (ZeroMQ), `mode="inproc"` in a thread of
this process (tests). Either way this (HTTP) process tokenizes and validates requests
(`InputProcessor`), detokenizes and applies stop strings (`OutputProcessor`), and hands each
request's outputs to its own collector queue.

Invariants: a request id has a collector from `generate()` until its final output, error, or
abort; a generator that exits early (client disconnect, cancellation) aborts its request in the
core, so all its sequences (n > 1, beams) stop and their blocks are freed at once.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional

from engine.input_processor import InputProcessor
from engine.output_processor import OutputProcessor
from engine.outputs import EngineCoreOutput, RequestOutput
from engine.sampling_params import SamplingParams
from server.core_client import CoreClient, ProcessCoreClient, ThreadCoreClient
from server.core_protocol import BlockMapReply, OutputBatch, Ready, StatsReply
from server.errors import EngineDeadError, from_value_error
from server.metrics import ServerMetrics

logger = logging.getLogger("pagedserve.server")


class EngineClient(ABC):
    """What the serving layer needs from an engine, whatever runs it."""

    model_config: Any
    tokenizer: Any

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def shutdown(self) -> None: ...

    @abstractmethod
    def add_request(self, request_id: str, prompt: Optional[str],
                    prompt_token_ids: Optional[list[int]],
                    params: SamplingParams, add_special_tokens: bool = True) -> "RequestStream":
        """Validate and submit one request; iterate the returned stream for its outputs.

        Raises ValueError (invalid or over-long request, before anything is allocated) or
        EngineDeadError. The caller must `close()` the stream when done with it (in a
        `finally`): closing an unfinished stream aborts the request.
        """

    @abstractmethod
    def abort(self, request_id: str) -> None: ...

    @abstractmethod
    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    @abstractmethod
    def default_max_tokens(self, prompt_len: int, num_seqs: int) -> Optional[int]:
        """max_tokens for a request that gives none (chat): as many as context and pool allow."""

    @abstractmethod
    async def get_stats(self) -> dict: ...

    @abstractmethod
    def is_healthy(self) -> bool: ...

    @abstractmethod
    def num_waiting(self) -> int:
        """Requests waiting for the scheduler, including ones submitted since the last stats."""

    @property
    def num_in_flight(self) -> int:
        return 0


@dataclass
class _RequestState:
    """Per-request frontend bookkeeping: its output queue and latency timestamps."""

    queue: asyncio.Queue
    arrival: float
    num_tokens: int = 0
    first_token_time: Optional[float] = None
    last_token_time: Optional[float] = None


class AsyncEngineClient(EngineClient):
    """`EngineClient` over a core transport, with frontend input/output processing."""

    def __init__(self, config: Any, mode: str = "process", core_factory: Optional[str] = None,
                 metrics: Optional[ServerMetrics] = None, log_level: str = "INFO",
                 tokenizer: Any = None, cpu_threads: Optional[int] = None):
        if mode not in ("process", "inproc"):
            raise ValueError(f"engine_mode: must be 'process' or 'inproc', got {mode!r}")
        self.config = config
        self.model_config = config.model
        self.tokenizer = tokenizer  # loaded by start() unless given
        self.input_processor: Any = None  # built by start(): it needs the core's pool size
        self.output_processor: Any = None
        self.metrics = metrics
        self.core: CoreClient = (
            ProcessCoreClient(config, core_factory, log_level, cpu_threads)
            if mode == "process" else ThreadCoreClient(config, core_factory))
        self._states: dict[str, _RequestState] = {}
        self._stats: dict = {}
        self._adds_since_stats = 0
        self._stats_waiters: dict[int, asyncio.Future] = {}
        self._tokens = itertools.count()
        self._dead: Optional[str] = None
        self._loop_task: Optional[asyncio.Task] = None

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        # The core loads the model in its process while this one loads the tokenizer.
        core_ready = asyncio.ensure_future(self.core.start())
        if self.tokenizer is None:
            try:
                self.tokenizer = await asyncio.to_thread(_load_tokenizer, self.config)
            except BaseException:
                core_ready.cancel()
                await self.core.shutdown()
                raise
        self.output_processor = OutputProcessor(self.tokenizer)
        ready = await core_ready
        if not isinstance(ready, Ready):
            raise EngineDeadError(f"engine core sent {type(ready).__name__} before Ready")
        self._stats = dict(ready.stats)
        self.input_processor = InputProcessor(self.model_config, self.tokenizer, ready.vocab_size,
                                              ready.num_gpu_blocks, ready.block_size)
        self._loop_task = asyncio.create_task(self._output_loop(), name="engine-output-loop")

    async def shutdown(self) -> None:
        for rid in list(self._states):
            self.abort(rid)
        if self._loop_task is not None:
            self._loop_task.cancel()
        await self.core.shutdown()
        self._dead = self._dead or "the server is shutting down"

    def is_healthy(self) -> bool:
        return self._dead is None and self.core.is_alive()

    @property
    def num_in_flight(self) -> int:
        return len(self._states)

    # ---- requests --------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt: Optional[str],
                    prompt_token_ids: Optional[list[int]],
                    params: SamplingParams, add_special_tokens: bool = True) -> "RequestStream":
        if self._dead is not None or self.input_processor is None:
            raise EngineDeadError(self._dead or "the engine has not started")
        if request_id in self._states:
            raise ValueError(f"request_id: '{request_id}' is already in flight")
        arrival = time.time()
        # Raises ValueError before anything is allocated anywhere.
        req = self.input_processor.process(request_id, prompt, prompt_token_ids, params,
                                           arrival_time=arrival,
                                           add_special_tokens=add_special_tokens)
        state = _RequestState(queue=asyncio.Queue(), arrival=arrival)
        self.output_processor.add_request(request_id, prompt, req.prompt_token_ids, params)
        self._states[request_id] = state
        try:
            self.core.add_request(req)
        except BaseException:  # the core is unreachable: leave nothing behind
            self._states.pop(request_id, None)
            self.output_processor.abort(request_id)
            raise
        self._adds_since_stats += 1
        return RequestStream(self, request_id, state.queue, req.prompt_token_ids)

    def default_max_tokens(self, prompt_len: int, num_seqs: int) -> Optional[int]:
        """The largest max_tokens a request may ask for: within the context and within what the
        KV pool can ever hold for it (None when even one token does not fit)."""
        from engine.input_processor import worst_case_blocks

        ip = self.input_processor
        hi = self.model_config.max_model_len - prompt_len
        if ip is None or hi < 1:
            return None
        if worst_case_blocks(prompt_len, hi, num_seqs, ip.block_size) <= ip.num_gpu_blocks:
            return hi
        lo = 0  # invariant: lo fits (or is 0), hi does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if worst_case_blocks(prompt_len, mid, num_seqs, ip.block_size) <= ip.num_gpu_blocks:
                lo = mid
            else:
                hi = mid
        return lo or None

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text` exactly as requests are tokenized."""
        return self.input_processor.tokenize(text, add_special_tokens)

    def abort(self, request_id: str) -> None:
        if self._states.pop(request_id, None) is None:
            return
        self.output_processor.abort(request_id)
        if self._dead is None:
            try:
                self.core.abort_requests([request_id])
            except EngineDeadError:
                pass
        logger.debug("Aborted request %s", request_id)

    # ---- stats -----------------------------------------------------------------------------
    async def get_stats(self, timeout: float = 1.0) -> dict:
        """Fresh core stats when the core answers within `timeout`, else the latest snapshot."""
        if self._dead is not None:
            return dict(self._stats)
        token = next(self._tokens)
        fut = asyncio.get_running_loop().create_future()
        self._stats_waiters[token] = fut
        try:
            self.core.request_stats(token)
            return dict(await asyncio.wait_for(fut, timeout))
        except (asyncio.TimeoutError, EngineDeadError):
            return dict(self._stats)
        finally:
            self._stats_waiters.pop(token, None)

    def num_waiting(self) -> int:
        return int(self._stats.get("num_waiting", 0)) + self._adds_since_stats

    async def get_block_map(self, timeout: float = 2.0) -> dict:
        """The core's KV block map (engine/kv_snapshot.py); {} when it does not answer in time."""
        if self._dead is not None:
            return {}
        token = next(self._tokens)
        fut = asyncio.get_running_loop().create_future()
        self._stats_waiters[token] = fut
        try:
            self.core.request_block_map(token)
            return dict(await asyncio.wait_for(fut, timeout))
        except (asyncio.TimeoutError, EngineDeadError):
            return {}
        finally:
            self._stats_waiters.pop(token, None)

    # ---- output loop -----------------------------------------------------------------------
    async def _output_loop(self) -> None:
        try:
            while True:
                msg = await self.core.get_output()
                if isinstance(msg, OutputBatch):
                    if msg.stats is not None:
                        self._stats = msg.stats
                        self._adds_since_stats = 0
                        if self.metrics is not None:
                            self.metrics.update_engine_stats(msg.stats)
                    if msg.first_scheduled and self.metrics is not None:
                        self._observe_queue_times(msg.first_scheduled)
                    if msg.outputs:
                        self._route(msg.outputs)
                elif isinstance(msg, BlockMapReply):
                    fut = self._stats_waiters.get(msg.token)
                    if fut is not None and not fut.done():
                        fut.set_result(msg.block_map)
                elif isinstance(msg, StatsReply):
                    self._stats = msg.stats
                    fut = self._stats_waiters.get(msg.token)
                    if fut is not None and not fut.done():
                        fut.set_result(msg.stats)
        except asyncio.CancelledError:
            raise
        except EngineDeadError as exc:
            self._fail_all(str(exc))
        except Exception as exc:  # a frontend bug must not leave requests hanging
            logger.exception("Output loop failed")
            self._fail_all(f"output processing failed: {exc!r}")

    def _route(self, outputs: list[EngineCoreOutput]) -> None:
        ok: list[EngineCoreOutput] = []
        for out in outputs:
            state = self._states.get(out.request_id)
            if state is None:
                continue  # aborted while this step ran
            if out.error is not None:
                self.output_processor.abort(out.request_id)
                del self._states[out.request_id]
                state.queue.put_nowait(from_value_error(ValueError(out.error)))
                continue
            ok.append(out)
        if not ok:
            return
        processed = self.output_processor.process_outputs(ok)
        for rid, indices in processed.seqs_to_stop:
            self.core.stop_seqs(rid, indices)
        now = time.time()
        for ro in processed.request_outputs:
            state = self._states.get(ro.request_id)
            if state is None:
                continue
            if self.metrics is not None:
                self._observe_latency(state, ro, now)
            if ro.finished:
                del self._states[ro.request_id]  # finished in the core: nothing to abort
            state.queue.put_nowait(ro)

    def _observe_latency(self, state: _RequestState, ro: RequestOutput, now: float) -> None:
        assert self.metrics is not None
        total = sum(len(c.token_ids) for c in ro.outputs)
        if total > state.num_tokens:
            if state.first_token_time is None:
                state.first_token_time = now
                self.metrics.observe_ttft(now - state.arrival)
            elif state.last_token_time is not None:
                self.metrics.observe_itl(now - state.last_token_time)
            state.last_token_time = now
            state.num_tokens = total
        if ro.finished:
            reason = next((c.finish_reason for c in ro.outputs if c.finish_reason), "stop")
            self.metrics.observe_finished(reason, now - state.arrival)

    def _observe_queue_times(self, first_scheduled: dict[str, float]) -> None:
        assert self.metrics is not None
        for rid, t in first_scheduled.items():
            state = self._states.get(rid)
            if state is not None:
                self.metrics.observe_queue_time(max(0.0, t - state.arrival))

    def _fail_all(self, reason: str) -> None:
        self._dead = reason
        logger.error("Engine is dead: %s; failing %d in-flight requests", reason,
                     len(self._states))
        for state in self._states.values():
            state.queue.put_nowait(EngineDeadError(reason))
        self._states.clear()
        for fut in self._stats_waiters.values():
            if not fut.done():
                fut.set_exception(EngineDeadError(reason))


class RequestStream:
    """Async iterator over one request's outputs (`RequestOutput`, cumulative per choice)."""

    def __init__(self, client: EngineClient, request_id: str, queue: asyncio.Queue,
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


def _load_tokenizer(config: Any) -> Any:
    """The tokenizer of the served model, loaded the way the offline engine loads it."""
    from engine.loader.tokenizer import get_tokenizer
    return get_tokenizer(config.model)
