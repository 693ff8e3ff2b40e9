"""Rank 0 of a tensor-parallel engine: spawns ranks 1..N-1, holds rank 0's model runner in the
engine core's own process and forwards each step to the workers (engine/distributed/worker.py).

`TPModelRunner` is a drop-in for `ModelRunner` (the engine core calls `launch`, `finish`,
`execute` and reads its attributes), so the scheduler runs once and nothing in the core knows the
model is sharded. Each step costs one pickled `SchedulerOutput` per worker over a pipe.

Failure: a worker that has exited makes the next step raise at once; one that dies mid-step breaks
the group's connections, and one that hangs makes the collective time out after
`distributed_timeout_s`; each surfaces as an exception in the engine core, which the frontend's
death policy handles, never as a hang.
"""
from __future__ import annotations

import itertools
import multiprocessing
import socket
import time
import weakref
from typing import Any, Optional

import torch

from engine.config import EngineConfig
from engine.distributed import parallel_state
from engine.distributed.worker import run_worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TPModelRunner:
    def __init__(self, config: EngineConfig):
        from engine.model_runner import ModelRunner

        n = config.parallel.tensor_parallel_size
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        mp = multiprocessing.get_context("spawn")
        threads = max(1, torch.get_num_threads() // n)
        self._conns, self._procs = [], []
        for rank in range(1, n):
            parent, child = mp.Pipe()
            proc = mp.Process(target=run_worker, name=f"pagedserve-tp{rank}", daemon=True,
                              args=(config, rank, init_method, child, threads))
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self._finalizer = weakref.finalize(self, _stop_workers, self._conns, self._procs)
        timeout = config.parallel.distributed_timeout_s
        for rank in range(1, n):  # a worker that fails to start is reported, not waited for
            self._expect(rank, "started", timeout)
        torch.set_num_threads(threads)
        parallel_state.init_tensor_parallel(0, n, init_method, config.runner.device,
                                            config.parallel.distributed_timeout_s)
        self.runner = ModelRunner(config)
        for rank in range(1, n):
            blocks = self._expect(rank, "ready", timeout)
            if blocks != self.runner.num_gpu_blocks:
                raise RuntimeError(f"rank {rank} sized its KV pool to {blocks} blocks, rank 0 "
                                   f"to {self.runner.num_gpu_blocks}")
        self._step_ids = itertools.count()

    def _expect(self, rank: int, what: str, timeout: float) -> Any:
        conn, proc = self._conns[rank - 1], self._procs[rank - 1]
        deadline = time.monotonic() + timeout
        while not conn.poll(0.1):
            if not proc.is_alive():
                raise RuntimeError(f"tensor-parallel rank {rank} exited with code "
                                   f"{proc.exitcode} before it was {what}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"tensor-parallel rank {rank} not {what} after {timeout} s")
        status, value = conn.recv()
        if status != what:
            raise RuntimeError(f"tensor-parallel rank {rank}: expected {what!r}, got {status!r}")
        return value

    def __getattr__(self, name: str) -> Any:
        # Attributes the core reads (num_gpu_blocks, model, device, ...) are rank 0's.
        return getattr(self.__dict__["runner"], name)

    def _broadcast(self, msg: tuple) -> None:
        for rank, (conn, proc) in enumerate(zip(self._conns, self._procs), start=1):
            if not proc.is_alive():
                raise RuntimeError(f"tensor-parallel rank {rank} died "
                                   f"(exit code {proc.exitcode})")
            conn.send(msg)

    # Workers read placeholder tokens from their own samples, drawn at launch without a grammar
    # mask: a sequence whose sampling reads its latest tokens (grammar, penalties) must not
    # overlap steps here (its real token reaches them instead).
    defers_sampling = False

    def launch(self, out, prev: Optional[Any] = None, sample: bool = True):
        """Workers always sample at launch: they get no grammar (nothing of theirs waits for
        host tokens) and their samples only mirror rank 0's, drawn in the same step order."""
        step_id = next(self._step_ids)
        self._broadcast(("launch", step_id, out, getattr(prev, "tp_step_id", None)))
        try:
            step = self.runner.launch(out, prev, sample=sample)
        except RuntimeError as e:
            raise self._failure(e) from e
        step.tp_step_id = step_id
        return step

    def sample(self, step, background: bool = False) -> None:
        self.runner.sample(step)  # never deferred here (defers_sampling is False)

    def finish(self, step):
        self._broadcast(("finish", step.tp_step_id))
        try:
            return self.runner.finish(step)
        except RuntimeError as e:
            raise self._failure(e) from e

    def _failure(self, error: Exception) -> RuntimeError:
        """A collective failed: name the ranks that are gone (a peer may still be exiting)."""
        for proc in self._procs:
            proc.join(timeout=1.0)
        dead = [f"rank {r} (exit code {p.exitcode})"
                for r, p in enumerate(self._procs, start=1) if not p.is_alive()]
        who = ", ".join(dead) if dead else "a peer timed out or failed"
        return RuntimeError(f"tensor-parallel step failed: {who}: {error}")

    def execute(self, out):
        return self.finish(self.launch(out))

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def shutdown(self) -> None:
        self._finalizer()


def _stop_workers(conns, procs) -> None:
    for conn in conns:
        try:
            conn.send(("shutdown",))
        except (OSError, BrokenPipeError):
            pass
    for proc in procs:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    for conn in conns:
        conn.close()
    parallel_state.destroy_tensor_parallel()


def make_model_runner(config: EngineConfig):
    """The engine core's runner: a plain `ModelRunner` for one rank, else rank 0's executor."""
    if config.parallel.tensor_parallel_size == 1:
        from engine.model_runner import ModelRunner
        return ModelRunner(config)
    return TPModelRunner(config)
