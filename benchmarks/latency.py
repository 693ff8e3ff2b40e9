"""Decode step latency at batch 1..256 against the weight-streaming floor.

A decode step must read every weight once, so `floor = weight bytes / device-to-device copy
bandwidth` (measured in the same run) bounds it from below. Each batch size runs requests with
64-token random prompts to steady decode, then times whole engine steps (schedule, inputs, CUDA
graph replay, sampling, bookkeeping: what a user waits for) and reports the median.
Metric `bs1_step_over_floor` = batch-1 step time / floor.

    python benchmarks/latency.py --model-shape llama3-8b
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.kernel_bench._common import copy_bandwidth  # noqa: E402
from benchmarks.model_shapes import shape_folder  # noqa: E402
from benchmarks.record import append_result  # noqa: E402


def time_decode_steps(engine, batch: int, vocab: int, steps: int, prompt_len: int = 64) -> float:
    from engine import SamplingParams
    rng = random.Random(batch)
    params = SamplingParams(temperature=0, max_tokens=steps + 8, ignore_eos=True, detokenize=False)
    ids = [f"lat-{batch}-{i}" for i in range(batch)]
    for rid in ids:
        engine.add_request(rid, None, params,
                           prompt_token_ids=[rng.randrange(vocab) for _ in range(prompt_len)])
    engine.step()  # prefill (budget permitting, all at once)
    while any(s.num_computed_tokens < s.prompt_len
              for r in engine.core.scheduler.running for s in r.live_seqs()):
        engine.step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t0)
    for rid in ids:
        engine.abort_request(rid)
    return statistics.median(times[2:])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-shape", default="llama3-8b")
    ap.add_argument("--batches", default="1,2,4,8,16,32,64,128,256")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    args = ap.parse_args(argv)
    from engine import EngineArgs, LLMEngine

    batches = [int(b) for b in args.batches.split(",")]
    eargs = EngineArgs(model=shape_folder(args.model_shape), load_format="dummy",
                       skip_tokenizer_init=True, max_num_seqs=max(batches),
                       enforce_eager=args.enforce_eager, max_model_len=2048,
                       gpu_memory_utilization=args.gpu_memory_utilization)
    engine = LLMEngine.from_engine_args(eargs)
    model = engine.core.runner.model
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    device = engine.core.runner.device
    bw = copy_bandwidth(device) if device.type == "cuda" else float("nan")
    floor_s = weight_bytes / bw
    vocab = engine.core.runner.vocab_size
    rows = {}
    for b in batches:
        rows[b] = time_decode_steps(engine, b, vocab, args.steps)
        print(f"batch {b:4d}: step {rows[b] * 1e3:8.3f} ms  ({rows[b] / floor_s:5.2f} x floor)",
              flush=True)
    metrics = {
        "weight_bytes": weight_bytes,
        "copy_bw_bytes_s": bw,
        "floor_ms": floor_s * 1e3,
        "step_ms": {str(b): t * 1e3 for b, t in rows.items()},
        "bs1_step_over_floor": rows[batches[0]] / floor_s if batches[0] == 1 else None,
        "cuda_graphs": engine.core.runner.graphs is not None,
    }
    params = {"model_shape": args.model_shape, "batches": batches, "steps": args.steps,
              "dtype": str(engine.config.model.dtype)}
    if device.type == "cuda":
        append_result("latency", params, metrics)
    print(f"floor {floor_s * 1e3:.3f} ms; bs1_step_over_floor {metrics['bs1_step_over_floor']}")
    return metrics


if __name__ == "__main__":
    main()
