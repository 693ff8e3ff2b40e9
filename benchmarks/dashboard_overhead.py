"""What an open dashboard costs the engine core: block-map snapshots vs step time.

    python benchmarks/dashboard_overhead.py [--blocks 5825 100000] [--steps 40]

The dashboard asks the core for one block map per `BLOCK_MAP_TTL_S` (0.5 s), or per 200 times
the last snapshot's time in the core when that is longer, whatever the number of open pages, and
nothing when none is open; every other dashboard figure is computed in the HTTP process from
the stats the core already sends. So the core's added share of time is
`snapshot_s / max(BLOCK_MAP_TTL_S, snapshot_s / 0.005)`, at most 0.5% (snapshots are taken
between steps, in the core loop). This
times `kv_snapshot.pool_map` on pools of the given sizes (half the blocks used, some shared and
cached, as under load) and, for reference, the default model's CPU step time with a batch of
decodes. Never a pass/fail test.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.block_pool import BlockPool  # noqa: E402
from engine.kv_snapshot import pool_map  # noqa: E402
from server.dashboard import BLOCK_MAP_MAX_SHARE, BLOCK_MAP_TTL_S  # noqa: E402


def loaded_pool(n: int) -> BlockPool:
    rng = random.Random(0)
    pool = BlockPool(n)
    for _ in range(n // 2):
        b = pool.allocate()
        if rng.random() < 0.2:
            pool.incref(b)
        if rng.random() < 0.3:
            pool.register(b, rng.getrandbits(60))
    return pool


def time_snapshot(n: int, repeat: int = 20) -> float:
    pool = loaded_pool(n)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        pool_map(pool)
        best = min(best, time.perf_counter() - t0)
    return best


def cpu_step_time(steps: int) -> float:
    from engine import LLM, SamplingParams

    llm = LLM(device="cpu", seed=0)
    engine = llm.llm_engine
    for i in range(8):
        engine.add_request(str(i), "Once upon a time", SamplingParams(max_tokens=steps + 8,
                                                                     ignore_eos=True))
    for _ in range(4):  # prefill and warm-up
        engine.step()
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, nargs="+", default=[5825, 100_000])
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    for n in args.blocks:
        s = time_snapshot(n)
        interval = max(BLOCK_MAP_TTL_S, s / BLOCK_MAP_MAX_SHARE)
        print(f"block map of {n} blocks: {s * 1e3:.2f} ms per snapshot; one per "
              f"{interval:.2f} s while a dashboard is open = {100 * s / interval:.2f}% "
              f"of the core's time")
    if args.steps:
        step = cpu_step_time(args.steps)
        print(f"default model, CPU, 8 decodes per step: {step * 1e3:.1f} ms per step")


if __name__ == "__main__":
    main()
