"""A tensor-parallel worker process (ranks 1..N-1): joins the group, builds its shard of the
model runner, then replays every step the engine core's rank 0 launches.

Rank 0 sends each step's `SchedulerOutput` once over a pipe (`("launch", step_id, out,
prev_step_id)` then `("finish", step_id)`); the worker runs the same `launch`/`finish` calls on its
runner, so every rank computes its share of each layer and meets the others in the collectives.
Sampling runs on every rank from identical gathered logits with the same seeded generator, so
placeholder tokens (async scheduling) resolve identically; only rank 0's samples are reported.
A worker exits when the pipe closes (its core is gone) and on any error, which makes rank 0's
next collective fail.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import traceback
from multiprocessing.connection import Connection

import torch

logger = logging.getLogger(__name__)


def rank_config(config, rank: int):
    """The engine config as rank `rank` sees it: its own GPU on CUDA."""
    device = config.runner.device
    if device.type != "cuda":
        return config
    return dataclasses.replace(
        config, runner=dataclasses.replace(config.runner, device=torch.device("cuda", rank)))


def run_worker(config, rank: int, init_method: str, conn: Connection,
               cpu_threads: int) -> None:
    from engine.distributed import parallel_state
    from engine.model_runner import ModelRunner

    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s [tp{rank}] %(name)s: %(message)s")
    torch.set_num_threads(cpu_threads)
    code = 0
    try:
        conn.send(("started", os.getpid()))
        config = rank_config(config, rank)
        parallel_state.init_tensor_parallel(rank, config.parallel.tensor_parallel_size,
                                            init_method, config.runner.device,
                                            config.parallel.distributed_timeout_s)
        runner = ModelRunner(config)
        conn.send(("ready", runner.num_gpu_blocks))
        # Capture runs collectives: rank 0 joins once its engine core is set up (after "ready").
        runner.capture_graphs()
        steps = {}
        while True:
            try:
                msg = conn.recv()
            except EOFError:
                break
            if msg[0] == "launch":
                _, step_id, out, prev_id = msg
                steps[step_id] = runner.launch(out, steps.get(prev_id))
            elif msg[0] == "finish":
                runner.finish(steps.pop(msg[1]))
            elif msg[0] == "shutdown":
                break
            else:
                raise RuntimeError(f"unknown tensor-parallel command {msg[0]!r}")
    except Exception:
        logger.error("tensor-parallel rank %d failed:\n%s", rank, traceback.format_exc())
        code = 1
    finally:
        conn.close()
    os._exit(code)
