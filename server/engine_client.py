"""The async engine client the HTTP handlers talk to.

`EngineClient` is the interface (server/engine_client_api.py); `AsyncEngineClient` implements it over a `CoreClient` transport:
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
import functools
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

from engine.input_processor import InputProcessor, max_tokens_that_fit
from engine.output_processor import OutputProcessor
from engine.outputs import EngineCoreOutput, RequestOutput
from engine.sampling_params import SamplingParams
from server.core_client import CoreClient, ProcessCoreClient, ThreadCoreClient
from server.core_protocol import BlockMapReply, OutputBatch, Ready, StatsReply
from server.engine_client_api import EngineClient  # noqa: F401 (re-exported)
from server.engine_health import RestartBudget, RestartPolicy, StepWatchdog, restart_core
from server.errors import EngineDeadError, from_value_error
from server.metrics import ServerMetrics
from server.request_stream import RequestState, RequestStream

logger = logging.getLogger("pagedserve.server")


class AsyncEngineClient(EngineClient):
    """`EngineClient` over a core transport, with frontend input/output processing."""

    def __init__(self, config: Any, mode: str = "process", core_factory: Optional[str] = None,
                 metrics: Optional[ServerMetrics] = None, log_level: str = "INFO",
                 tokenizer: Any = None, cpu_threads: Optional[int] = None,
                 restart: Optional[RestartPolicy] = None, step_timeout_s: float = 120.0,
                 on_fatal: Optional[Callable[[str], None]] = None,
                 skip_tokenizer_init: bool = False):
        if mode not in ("process", "inproc"):
            raise ValueError(f"engine_mode: must be 'process' or 'inproc', got {mode!r}")
        self.config = config
        self.model_config = config.model
        self.tokenizer = tokenizer  # loaded by start() unless given or skipped
        # --skip-tokenizer-init: token-id prompts only; outputs carry token ids, no text.
        self.skip_tokenizer_init = skip_tokenizer_init
        self.input_processor: Any = None  # built by start(): it needs the core's pool size
        self.output_processor: Any = None
        self.metrics = metrics
        self._make_core: Callable[[], CoreClient] = (
            functools.partial(ProcessCoreClient, config, core_factory, log_level, cpu_threads)
            if mode == "process" else functools.partial(ThreadCoreClient, config, core_factory))
        self.core: CoreClient = self._make_core()
        self._restart = RestartBudget(restart or RestartPolicy(enabled=False))
        self._watchdog = StepWatchdog(step_timeout_s)
        self._on_fatal = on_fatal  # called once when the engine is gone for good
        self._restarting = False
        self._max_num_seqs = int(config.scheduler.max_num_seqs)
        # Tokenizing a long prompt takes long: never on the event loop.
        self._tokenize_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tokenize")
        self._states: dict[str, RequestState] = {}
        self._unscheduled: set[str] = set()  # submitted, not yet scheduled by the core
        self._reserved = 0  # admitted by the queue limit, still tokenizing
        self._stats: dict = {}
        self._stats_waiters: dict[int, asyncio.Future] = {}
        self._tokens = itertools.count()
        self._dead: Optional[str] = None
        self._closing = False
        self._loop_task: Optional[asyncio.Task] = None

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        # The core loads the model in its process while this one loads the tokenizer.
        core_ready = asyncio.ensure_future(self.core.start())
        if self.tokenizer is None and not self.skip_tokenizer_init:
            try:
                self.tokenizer = await asyncio.to_thread(_load_tokenizer, self.config)
            except BaseException:
                core_ready.cancel()
                await self.core.shutdown()
                raise
        self.output_processor = OutputProcessor(self.tokenizer)
        self._on_ready(await core_ready)
        self._loop_task = asyncio.create_task(self._supervise(), name="engine-supervisor")

    def _on_ready(self, ready: Any) -> None:
        if not isinstance(ready, Ready):
            raise EngineDeadError(f"engine core sent {type(ready).__name__} before Ready")
        self._stats = dict(ready.stats)
        self.input_processor = InputProcessor(self.model_config, self.tokenizer, ready.vocab_size,
                                              ready.num_gpu_blocks, ready.block_size,
                                              self._max_num_seqs,
                                              speculative=self.config.speculative is not None)
        self._watchdog.heard(idle=True)
        self._restart.core_started()

    async def shutdown(self) -> None:
        self._closing = True
        for rid in list(self._states):
            self.abort(rid)
        if self._loop_task is not None:
            self._loop_task.cancel()
        await self.core.shutdown()
        self._tokenize_pool.shutdown(wait=False, cancel_futures=True)
        self._dead = self._dead or "the server is shutting down"

    def health_problem(self) -> Optional[str]:
        if self._dead is not None:
            return self._dead
        if self._restarting:
            return "the engine core is restarting"
        if not self.core.is_alive():
            return "the engine core process is not running"
        return self._watchdog.problem(bool(self._states))

    @property
    def num_in_flight(self) -> int:
        return len(self._states)

    # ---- requests --------------------------------------------------------------------------
    async def add_request(self, request_id: str, prompt: Optional[str],
                          prompt_token_ids: Optional[list[int]],
                          params: SamplingParams,
                          add_special_tokens: bool = True) -> "RequestStream":
        self._check_serving()
        if request_id in self._states:
            raise ValueError(f"request_id: '{request_id}' is already in flight")
        arrival = time.time()
        # Raises ValueError before anything is allocated anywhere; tokenizes in a worker.
        req = await asyncio.get_running_loop().run_in_executor(
            self._tokenize_pool, functools.partial(
                self.input_processor.process, request_id, prompt, prompt_token_ids, params,
                arrival_time=arrival, add_special_tokens=add_special_tokens))
        self._check_serving()  # the core may have died while this prompt was tokenized
        if request_id in self._states:
            raise ValueError(f"request_id: '{request_id}' is already in flight")
        state = RequestState(arrival=arrival)
        self.output_processor.add_request(request_id, prompt, req.prompt_token_ids, params)
        self._states[request_id] = state
        try:
            self.core.add_request(req)
        except BaseException:  # the core is unreachable: leave nothing behind
            self._states.pop(request_id, None)
            self.output_processor.abort(request_id)
            raise
        self._unscheduled.add(request_id)
        self._watchdog.work_sent()
        return RequestStream(self, request_id, state.queue, req.prompt_token_ids)

    def _check_serving(self) -> None:
        if self._dead is not None or self.input_processor is None:
            raise EngineDeadError(self._dead or "the engine has not started")
        if self._restarting:
            raise EngineDeadError("the engine core is restarting; retry shortly")

    def default_max_tokens(self, prompt_len: int, num_seqs: int) -> Optional[int]:
        """The largest max_tokens a request may ask for: within the context and within what the
        KV pool can ever hold for it (None when even one token does not fit)."""
        ip = self.input_processor
        if ip is None:
            return None
        return max_tokens_that_fit(prompt_len, num_seqs, self.model_config.max_model_len,
                                   ip.block_size, ip.num_gpu_blocks)

    async def tokenize(self, text: str, add_special_tokens: bool = True,
                       check_length: bool = False, field: str = "prompt") -> list[int]:
        """Token ids of `text` exactly as requests are tokenized."""
        ip = self.input_processor
        if ip is None:
            raise EngineDeadError(self._dead or "the engine has not started")
        fn = (functools.partial(ip.tokenize_for_context, field=field) if check_length
              else ip.tokenize)
        return await asyncio.get_running_loop().run_in_executor(
            self._tokenize_pool, fn, text, add_special_tokens)

    def abort(self, request_id: str) -> None:
        self._unscheduled.discard(request_id)
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

    def num_waiting(self, adding: int = 0) -> int:
        free_slots = max(0, self._max_num_seqs - int(self._stats.get("num_running", 0)))
        return max(int(self._stats.get("num_waiting", 0)),
                   len(self._unscheduled) + self._reserved + adding - free_slots)

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

    def reserve(self, num_prompts: int) -> None:
        self._reserved += num_prompts

    def fail_in_flight(self, error: BaseException) -> None:
        for rid, state in list(self._states.items()):
            self.abort(rid)
            state.queue.put_nowait(error)

    # ---- output loop and engine death policy ---------------------------------------------
    async def _supervise(self) -> None:
        """Route the core's outputs; when it dies, fail what was in flight, then restart it
        (bounded retries with backoff) or give up (fail-fast: `on_fatal`)."""
        while True:
            try:
                await self._output_loop()
                return
            except asyncio.CancelledError:
                raise
            except EngineDeadError as exc:
                reason = str(exc)
            except Exception as exc:  # a frontend bug must not leave requests hanging
                logger.exception("Output loop failed")
                reason = f"output processing failed: {exc!r}"
            self._fail_all(reason)
            if self._closing or not await self._restart_core(reason):
                self._dead = reason
                if not self._closing and self._on_fatal is not None:
                    self._on_fatal(reason)
                return

    async def _restart_core(self, reason: str) -> bool:
        """True once a fresh core is ready; False when the policy says to give up."""
        self._restarting = True
        try:
            core = await restart_core(self._restart, reason, self.core, self._make_core,
                                      self._on_ready)
        finally:
            self._restarting = False
        if core is None:
            return False
        self.core = core
        if self.metrics is not None:
            self.metrics.engine_restarted()
        return True

    async def _output_loop(self) -> None:
        while True:
            msg = await self.core.get_output()
            if isinstance(msg, OutputBatch):
                self._watchdog.heard(msg.idle)
                if msg.stats is not None:
                    self._stats = msg.stats
                    if self.metrics is not None:
                        self.metrics.update_engine_stats(msg.stats)
                if msg.first_scheduled:
                    self._scheduled(msg.first_scheduled)
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

    def _route(self, outputs: list[EngineCoreOutput]) -> None:
        ok: list[EngineCoreOutput] = []
        for out in outputs:
            state = self._states.get(out.request_id)
            if state is None:
                continue  # aborted while this step ran
            if out.error is not None:
                self.output_processor.abort(out.request_id)
                del self._states[out.request_id]
                self._unscheduled.discard(out.request_id)
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
                self._unscheduled.discard(ro.request_id)
            state.queue.put_nowait(ro)

    def _observe_latency(self, state: RequestState, ro: RequestOutput, now: float) -> None:
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

    def _scheduled(self, first_scheduled: dict[str, float]) -> None:
        for rid, t in first_scheduled.items():
            self._unscheduled.discard(rid)
            state = self._states.get(rid)
            if state is not None and self.metrics is not None:
                self.metrics.observe_queue_time(max(0.0, t - state.arrival))

    def _fail_all(self, reason: str) -> None:
        """The core is gone: every in-flight request ends with a 503 / error event."""
        logger.error("Engine core is gone: %s; failing %d in-flight requests", reason,
                     len(self._states))
        for rid in self._states:
            self.output_processor.abort(rid)
        for state in self._states.values():
            state.queue.put_nowait(EngineDeadError(reason))
        self._states.clear()
        self._unscheduled.clear()
        for fut in self._stats_waiters.values():
            if not fut.done():
                fut.set_exception(EngineDeadError(reason))


def _load_tokenizer(config: Any) -> Any:
    """The tokenizer of the served model, loaded the way the offline engine loads it."""
    from engine.loader.tokenizer import get_tokenizer
    return get_tokenizer(config.model)
