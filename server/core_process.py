"""The engine core busy loop, run in its own process (or a thread, for tests).

`CoreLoop` owns an `EngineCore`: it drains input messages, steps the core while it has work,
and sends one `OutputBatch` per iteration that changed anything. It blocks on its inbox while
the core is idle or stuck (a step that changed nothing: no request can be scheduled until an
input arrives), so it never spins; a busy core never waits on the frontend. The output path is
bounded: sends block once the frontend is `OUTPUT_HWM` messages behind. It is transport-agnostic:
`run_core_process` wires it to ZeroMQ sockets (msgpack frames), `core_client.ThreadCoreClient`
to queues.

Invariant: every request added to the core ends with exactly one `finished=True` output for it
(normal finish, or an error output when `add_request` rejected it); aborted requests end silently
(the frontend dropped their collector before aborting).
"""
from __future__ import annotations

import gc
import importlib
import logging
import os
import time
import traceback
from typing import Any, Callable, Optional

from server.core_protocol import (AbortRequests, AddRequest, BlockMapReply, CoreFailed,
                                  GetBlockMap, GetStats, InputMsg, OutputBatch, OutputMsg, Ready,
                                  Shutdown, StatsReply, StopSeqs, decode_input, encode)
from engine.kv_snapshot import block_map
from engine.outputs import EngineCoreOutput

logger = logging.getLogger("pagedserve.core")

# How long an idle loop blocks on its inbox before checking that its parent is still alive.
_IDLE_POLL_S = 0.5
# Output messages in flight between core and frontend before the core's sends block.
OUTPUT_HWM = 256


def ready_message(core: Any) -> Ready:
    """The Ready message for a loaded core."""
    stats = core.stats()
    runner = getattr(core, "runner", None)
    vocab = getattr(runner, "vocab_size", None)
    if vocab is None:
        vocab = int(getattr(core, "vocab_size"))
    return Ready(stats=stats, vocab_size=int(vocab), num_gpu_blocks=int(stats["num_total_blocks"]),
                 block_size=int(stats.get("block_size", core.config.cache.block_size)))


def load_core_factory(path: Optional[str]) -> Callable[[Any], Any]:
    """`module:attr` of a callable config -> core; None means the real `EngineCore`."""
    if not path:
        from engine.engine_core import EngineCore
        return EngineCore
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


class CoreLoop:
    """Drives `core` from `recv` (inbox) to `send` (outbox) until a Shutdown message."""

    def __init__(self, core: Any, recv: Callable[[Optional[float]], list[InputMsg]],
                 send: Callable[[OutputMsg], None],
                 alive: Callable[[], bool] = lambda: True):
        self.core = core
        self.recv = recv
        self.send = send
        self.alive = alive  # False when the frontend is gone: exit instead of idling forever
        self._seen_scheduled: set[str] = set()

    def run(self) -> None:
        next_check = time.monotonic() + _IDLE_POLL_S
        stalled = False  # the last step made no progress: wait for input as if idle
        last_key: Optional[tuple] = None
        last_idle: Optional[bool] = None
        while True:
            busy = self.core.has_unfinished_requests()
            msgs = self.recv(_IDLE_POLL_S if stalled or not busy else 0.0)
            if time.monotonic() >= next_check:  # busy or not: never outlive the frontend
                next_check = time.monotonic() + _IDLE_POLL_S
                if not self.alive():
                    logger.warning("Frontend process is gone; engine core exits")
                    return
            errors: list[EngineCoreOutput] = []
            stats_tokens: list[int] = []
            for msg in msgs:
                if isinstance(msg, Shutdown):
                    return
                if isinstance(msg, GetStats):
                    stats_tokens.append(msg.token)
                elif isinstance(msg, GetBlockMap):
                    self.send(BlockMapReply(token=msg.token, block_map=block_map(self.core)))
                else:
                    self._handle(msg, errors)
            if stats_tokens:  # answered after this batch's adds/aborts took effect
                stats = self.core.stats()
                for token in stats_tokens:
                    self.send(StatsReply(token=token, stats=stats))
            outputs: list[EngineCoreOutput] = []
            if self.core.has_unfinished_requests():
                outputs = self.core.step()
            stats = self.core.stats()
            key = _progress_key(stats)
            progressed = bool(outputs) or key != last_key
            last_key = key
            idle = not progressed or not self.core.has_unfinished_requests()
            stalled = idle and self.core.has_unfinished_requests()
            if msgs or errors or progressed or idle != last_idle:
                self.send(OutputBatch(outputs=errors + outputs, stats=stats,
                                      first_scheduled=self._newly_scheduled(outputs),
                                      idle=idle))
            last_idle = idle

    def _handle(self, msg: InputMsg, errors: list[EngineCoreOutput]) -> None:
        if isinstance(msg, AddRequest):
            try:
                self.core.add_request(msg.request)
            except Exception as exc:  # a bad request must never take the core down
                logger.warning("Request %s rejected by the core: %s", msg.request.request_id, exc)
                errors.append(EngineCoreOutput(request_id=msg.request.request_id, seqs=[],
                                               finished=True, error=str(exc)))
        elif isinstance(msg, AbortRequests):
            self.core.abort_requests(msg.request_ids)
            self._seen_scheduled.difference_update(msg.request_ids)
        elif isinstance(msg, StopSeqs):
            self.core.stop_seqs(msg.request_id, msg.indices)

    def _newly_scheduled(self, outputs: list[EngineCoreOutput]) -> Optional[dict[str, float]]:
        """First-scheduled times of requests the core started since the last batch.

        Read from the scheduler's requests when the core exposes them; otherwise the first output
        of a request stands in (it is produced by the step that scheduled it, or the last chunk
        of a chunked prefill).
        """
        found: dict[str, float] = {}
        sched = getattr(self.core, "scheduler", None)
        if sched is not None and len(self._seen_scheduled) > 1024:
            # Requests stopped by the frontend end without a finished output: forget the ids
            # the scheduler no longer holds (amortised, so the set stays small).
            live = {r.request_id for q in ("running", "waiting", "swapped")
                    for r in getattr(sched, q, ())}
            self._seen_scheduled &= live
        for req in list(getattr(sched, "running", ()) or ()):
            rid = getattr(req, "request_id", None)
            t = getattr(getattr(req, "metrics", None), "first_scheduled_time", None)
            if rid is not None and t is not None and rid not in self._seen_scheduled:
                self._seen_scheduled.add(rid)
                found[rid] = t
        now = time.time()
        for out in outputs:
            if out.request_id not in self._seen_scheduled and not out.finished:
                self._seen_scheduled.add(out.request_id)
                found.setdefault(out.request_id, now)
            if out.finished:
                self._seen_scheduled.discard(out.request_id)
        return found or None


def _progress_key(stats: dict) -> tuple:
    """What changes whenever a step did anything (scheduled, computed, freed or moved)."""
    return tuple(stats.get(k) for k in ("num_steps", "prompt_tokens_total",
                                         "generation_tokens_total", "num_running",
                                         "num_waiting", "num_swapped", "num_free_blocks",
                                         "num_preemptions"))


def set_cpu_threads(config: Any, cpu_threads: Optional[int]) -> None:
    """Torch intra-op threads of the engine core process.

    CPU engine: by default one core is left to the HTTP process. With every core taken by OpenMP
    workers, the HTTP process (and anything else on the machine) preempts them mid-operator and
    a step slows down many times over.

    GPU engine: one thread by default (as vLLM's GPU workers run), or `cpu_threads`, or the
    user's OMP_NUM_THREADS. Its host-side tensor work is small, and OpenMP workers woken by it
    spin between steps: on a H200 at full load the core process used ~5 CPU cores against
    vLLM's ~0.6 (effect on the step time not measured yet).
    """
    device = getattr(getattr(config, "runner", None), "device", None)
    kind = getattr(device, "type", None)
    import torch
    if kind == "cpu":
        n = cpu_threads or max(1, (os.cpu_count() or 2) - 1)
    elif kind == "cuda":
        if not cpu_threads and os.environ.get("OMP_NUM_THREADS"):
            return
        n = cpu_threads or 1
    else:
        return
    torch.set_num_threads(n)
    logger.info("Engine core uses %d CPU threads", n)


def run_core_process(config: Any, input_addr: str, output_addr: str,
                     core_factory: Optional[str] = None, log_level: str = "INFO",
                     cpu_threads: Optional[int] = None) -> None:
    """Entry point of the engine core process: load the model, then loop on ZeroMQ sockets."""
    import signal

    import zmq

    # The HTTP process owns the lifecycle: a Ctrl+C or SIGTERM sent to the whole process group
    # must not kill the core under in-flight requests during a graceful shutdown. The core exits
    # on a Shutdown message or when its parent is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s [core] %(name)s: %(message)s")
    parent = os.getppid()
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(input_addr)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 5000)
    push.setsockopt(zmq.SNDHWM, OUTPUT_HWM)
    push.connect(output_addr)
    alive = lambda: os.getppid() == parent  # noqa: E731

    def send(msg: OutputMsg) -> None:
        """Blocks while the frontend is OUTPUT_HWM messages behind (back-pressure), but not
        past the frontend's death."""
        data = encode(msg)
        while True:
            try:
                push.send(data, zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                if not push.poll(int(_IDLE_POLL_S * 1000), zmq.POLLOUT) and not alive():
                    raise RuntimeError("the frontend stopped reading and is gone")

    def recv(timeout: Optional[float]) -> list[InputMsg]:
        msgs: list[InputMsg] = []
        if timeout and not pull.poll(int(timeout * 1000)):
            return msgs
        while True:
            try:
                msgs.append(decode_input(pull.recv(zmq.NOBLOCK)))
            except zmq.Again:
                return msgs

    code = 0
    try:
        set_cpu_threads(config, cpu_threads)
        core = load_core_factory(core_factory)(config)
        # The loaded heap (model, block pool, imports: 10^5+ objects) leaves the cyclic GC's
        # passes: a full pass over it stalls whichever step it lands in by milliseconds (the
        # offline LLM does the same per generate call, engine.llm.frozen_gc_heap).
        gc.collect()
        gc.freeze()
        send(ready_message(core))
        CoreLoop(core, recv, send, alive=alive).run()
    except Exception:
        tb = traceback.format_exc()
        logger.error("Engine core failed:\n%s", tb)
        try:
            send(CoreFailed(message=tb.strip().splitlines()[-1]))
        except Exception:
            pass
        code = 1
    finally:
        pull.close(linger=0)
        push.close()
        ctx.term()
    os._exit(code)
