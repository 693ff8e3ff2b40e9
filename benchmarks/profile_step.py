"""Where a decode step's time goes: every GPU kernel of steady decode steps (CUDA graph replay
included) with its time per step, against the step's wall time.

    python benchmarks/profile_step.py --batches 1,64 [--engine fp8_kv_fp8]
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

from benchmarks.model_shapes import shape_folder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-shape", default="llama3-8b")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rows", type=int, default=30, help="kernel table rows")
    ap.add_argument("--engine", default="bf16",
                    help="an engine of benchmarks/quant_cases.py (bf16, fp8_kv_fp8, int8_w8a8, "
                         "gptq_w4_g128, awq_w4_g128) or fp8 / kv_fp8 alone")
    ap.add_argument("--input-len", type=int, default=64)
    args = ap.parse_args()
    from benchmarks.quant_cases import ENGINES
    extra = {"fp8": {"quantization": "fp8"}, "kv_fp8": {"kv_cache_dtype": "fp8"}}.get(args.engine)
    if extra is None:
        spec = ENGINES[args.engine]
        extra = {"quantization": spec.quantization, "kv_cache_dtype": spec.kv_cache_dtype}
        if spec.quant_config is not None:
            extra["hf_overrides"] = {"quantization_config": spec.quant_config}
    from engine import EngineArgs, LLMEngine, SamplingParams
    batches = [int(x) for x in args.batches.split(",")]
    eng = LLMEngine.from_engine_args(EngineArgs(
        model=shape_folder(args.model_shape), load_format="dummy", skip_tokenizer_init=True,
        max_num_seqs=max(batches), max_model_len=2048, gpu_memory_utilization=0.85, **extra))
    for b in batches:
        rng = random.Random(0)
        for i in range(b):
            eng.add_request(f"p{b}-{i}", None, SamplingParams(temperature=0, max_tokens=400,
                                                              ignore_eos=True, detokenize=False),
                            prompt_token_ids=[rng.randrange(1000) for _ in range(args.input_len)])
        for _ in range(4):
            eng.step()
        walls = []
        with torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                t0 = time.perf_counter()
                eng.step()
                walls.append(time.perf_counter() - t0)
            torch.cuda.synchronize()
        events = [e for e in prof.key_averages() if e.device_time_total > 0]
        gpu_ms = sum(e.self_device_time_total for e in events) / 1e3 / args.steps
        calls = sum(e.count for e in events) / args.steps
        print(f"[{args.engine}] batch {b}: step wall median {statistics.median(walls) * 1e3:.3f} ms (profiled), "
              f"GPU kernel time {gpu_ms:.3f} ms/step, {calls:.0f} kernels/step", flush=True)
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.rows))
        for i in range(b):
            eng.abort_request(f"p{b}-{i}")
        while eng.has_unfinished_requests():
            eng.step()


if __name__ == "__main__":
    main()
