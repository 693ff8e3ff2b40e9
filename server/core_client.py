"""Transports from the asyncio frontend to a `CoreLoop`: a background process or a thread.

Both expose the same small API: fire-and-forget sends (`add_request`, `abort_requests`,
`stop_seqs`, `request_stats`), one awaitable stream of output messages (`get_output`), and
liveness (`is_alive`). Sends never block the event loop; the path back is bounded (the core
blocks once `OUTPUT_HWM` messages wait for the frontend). `get_output` raises `EngineDeadError`
once the core is gone (crashed, killed, or failed to start).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import queue
import shutil
import tempfile
import threading
import traceback
from abc import ABC, abstractmethod
from typing import Any, Optional

from engine.outputs import EngineCoreRequest
from server.core_process import (OUTPUT_HWM, CoreLoop, load_core_factory, ready_message,
                                 run_core_process)
from server.core_protocol import (AbortRequests, AddRequest, CoreFailed, GetBlockMap, GetStats,
                                  InputMsg, OutputMsg, Shutdown, StopSeqs, decode_output, encode)
from server.errors import EngineDeadError

logger = logging.getLogger("pagedserve.server")

# How often the process client checks that the core process is still alive.
_WATCHDOG_S = 0.2


class CoreClient(ABC):
    """Frontend side of the engine-core message protocol."""

    @abstractmethod
    async def start(self) -> OutputMsg:
        """Start the core and wait until it is ready; returns its Ready message."""

    @abstractmethod
    def send(self, msg: InputMsg) -> None: ...

    @abstractmethod
    async def get_output(self) -> OutputMsg:
        """Next message from the core; raises EngineDeadError when there can be no more."""

    @abstractmethod
    def is_alive(self) -> bool: ...

    @abstractmethod
    async def shutdown(self, timeout: float = 10.0) -> None: ...

    def add_request(self, req: EngineCoreRequest) -> None:
        self.send(AddRequest(request=req))

    def abort_requests(self, request_ids: list[str]) -> None:
        if request_ids:
            self.send(AbortRequests(request_ids=list(request_ids)))

    def stop_seqs(self, request_id: str, indices: list[int]) -> None:
        self.send(StopSeqs(request_id=request_id, indices=list(indices)))

    def request_stats(self, token: int) -> None:
        self.send(GetStats(token=token))

    def request_block_map(self, token: int) -> None:
        self.send(GetBlockMap(token=token))


class ThreadCoreClient(CoreClient):
    """In-process mode: the core loop runs in a daemon thread of this process (tests)."""

    def __init__(self, config: Any, core_factory: Optional[str] = None):
        self._config = config
        self._factory = core_factory
        self._inbox: queue.Queue[InputMsg] = queue.Queue()
        self._outbox: Optional[asyncio.Queue[OutputMsg]] = None
        self._thread: Optional[threading.Thread] = None
        self._dead = False

    async def start(self) -> OutputMsg:
        loop = asyncio.get_running_loop()
        self._outbox = asyncio.Queue(maxsize=OUTPUT_HWM)
        outbox = self._outbox

        def send(msg: OutputMsg) -> None:
            """Blocks the core thread while the frontend is OUTPUT_HWM messages behind."""
            fut = asyncio.run_coroutine_threadsafe(outbox.put(msg), loop)
            while True:
                try:
                    fut.result(timeout=_WATCHDOG_S)
                    return
                except concurrent.futures.TimeoutError:
                    if loop.is_closed() or not loop.is_running():
                        fut.cancel()
                        raise RuntimeError("the frontend event loop is gone")

        def recv(timeout: Optional[float]) -> list[InputMsg]:
            msgs: list[InputMsg] = []
            try:
                msgs.append(self._inbox.get(timeout=timeout) if timeout else
                            self._inbox.get_nowait())
            except queue.Empty:
                return msgs
            while True:
                try:
                    msgs.append(self._inbox.get_nowait())
                except queue.Empty:
                    return msgs

        def main() -> None:
            try:
                core = load_core_factory(self._factory)(self._config)
                send(ready_message(core))
                CoreLoop(core, recv, send).run()
            except Exception:
                logger.error("Engine core thread failed:\n%s", traceback.format_exc())
                send(CoreFailed(message=traceback.format_exc().strip().splitlines()[-1]))
            finally:
                self._dead = True

        self._thread = threading.Thread(target=main, name="engine-core", daemon=True)
        self._thread.start()
        first = await outbox.get()
        if isinstance(first, CoreFailed):
            raise EngineDeadError(f"engine core failed to start: {first.message}")
        return first

    def send(self, msg: InputMsg) -> None:
        self._inbox.put(msg)

    async def get_output(self) -> OutputMsg:
        assert self._outbox is not None, "start() first"
        msg = await self._outbox.get()
        if isinstance(msg, CoreFailed):
            raise EngineDeadError(msg.message)
        return msg

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._dead

    async def shutdown(self, timeout: float = 10.0) -> None:
        if self._thread is not None and self._thread.is_alive():
            self.send(Shutdown())
            await asyncio.to_thread(self._thread.join, timeout)


class ProcessCoreClient(CoreClient):
    """Multiprocess mode: the core loop runs in a spawned process, reached over ZeroMQ IPC.

    A watchdog task notices the process dying (any cause, including SIGKILL) within
    `_WATCHDOG_S` and turns it into an EngineDeadError from `get_output`.
    """

    def __init__(self, config: Any, core_factory: Optional[str] = None, log_level: str = "INFO",
                 cpu_threads: Optional[int] = None):
        import zmq
        import zmq.asyncio

        self._config = config
        self._factory = core_factory
        self._log_level = log_level
        self._cpu_threads = cpu_threads
        self._dir = tempfile.mkdtemp(prefix="pagedserve-")
        self.input_addr = f"ipc://{self._dir}/input"
        self.output_addr = f"ipc://{self._dir}/output"
        self._ctx = zmq.asyncio.Context()
        # Sends are synchronous and non-blocking (PUSH buffers), so they are safe in `finally`
        # blocks of cancelled tasks; both sockets are used only from the event loop thread.
        self._sync_ctx = zmq.Context()
        self._push = self._sync_ctx.socket(zmq.PUSH)
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.setsockopt(zmq.SNDHWM, 0)
        self._push.bind(self.input_addr)
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.RCVHWM, OUTPUT_HWM)  # with the core's SNDHWM: a bounded path
        self._pull.bind(self.output_addr)
        self.proc: Optional[multiprocessing.process.BaseProcess] = None
        self._dead_reason: Optional[str] = None

    async def start(self) -> OutputMsg:
        mp = multiprocessing.get_context("spawn")
        # A tensor-parallel core spawns its rank workers, which a daemonic process may not.
        daemon = getattr(getattr(self._config, "parallel", None), "tensor_parallel_size", 1) == 1
        self.proc = mp.Process(target=run_core_process, name="pagedserve-core", daemon=daemon,
                               args=(self._config, self.input_addr, self.output_addr,
                                     self._factory, self._log_level, self._cpu_threads))
        self.proc.start()
        logger.info("Engine core process started (pid %d)", self.proc.pid)
        return await self.get_output()

    def send(self, msg: InputMsg) -> None:
        if self._dead_reason is not None:
            raise EngineDeadError(self._dead_reason)
        import zmq
        try:
            self._push.send(encode(msg), zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:  # closed socket at shutdown
            raise EngineDeadError(f"cannot reach the engine core: {exc}") from exc

    async def get_output(self) -> OutputMsg:
        import zmq
        while self._dead_reason is None:
            if await self._pull.poll(int(_WATCHDOG_S * 1000)):
                msg = decode_output(await self._pull.recv(zmq.NOBLOCK))
                if isinstance(msg, CoreFailed):
                    self._dead_reason = f"engine core failed: {msg.message}"
                    break
                return msg
            if self.proc is None or not self.proc.is_alive():
                code = None if self.proc is None else self.proc.exitcode
                self._dead_reason = f"engine core process exited (exit code {code})"
        raise EngineDeadError(self._dead_reason)

    def is_alive(self) -> bool:
        return self._dead_reason is None and self.proc is not None and self.proc.is_alive()

    async def shutdown(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is not None and proc.is_alive():
            try:
                self.send(Shutdown())
            except EngineDeadError:
                pass
            await asyncio.to_thread(proc.join, timeout)
            if proc.is_alive():
                logger.warning("Engine core did not stop in %.0f s; terminating it", timeout)
                proc.terminate()
                await asyncio.to_thread(proc.join, 5)
                if proc.is_alive():
                    proc.kill()
        self._dead_reason = self._dead_reason or "engine core was shut down"
        self._push.close(linger=0)
        self._pull.close(linger=0)
        self._ctx.term()
        self._sync_ctx.term()
        shutil.rmtree(self._dir, ignore_errors=True)
