"""Where an offline throughput run spends its time: per-step wall time by step kind, GPU kernel
time vs wall time in a profiled window, and the host functions that cost most there.

    python benchmarks/profile_throughput.py --workload sharegpt_like --model-shape llama3-8b

Steps are classed as `decode` (one token per sequence) or `mixed` (some prefill). The profiled
window (`--window START:LEN`, in steps) runs under torch.profiler (GPU kernel time) and cProfile
(host time). Prints a report; `--output` writes it too. Never a pass/fail test.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.model_shapes import shape_folder  # noqa: E402
from benchmarks.workloads import load_workload, random_prompt_token_ids  # noqa: E402


def _kind(core) -> tuple[str, int, int]:
    step = core._inflight
    if step is None or step.sched.is_empty:
        return "idle", 0, 0
    sched = step.sched.scheduled
    tokens = sum(s.num_tokens for s in sched)
    return ("decode" if tokens == len(sched) else "mixed"), len(sched), tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="sharegpt_like")
    ap.add_argument("--workload-dir", default=None)
    ap.add_argument("--num-requests", type=int, default=1000)
    ap.add_argument("--model-shape", default="llama3-8b")
    ap.add_argument("--max-num-seqs", type=int, default=None)
    ap.add_argument("--max-num-batched-tokens", type=int, default=None)
    ap.add_argument("--window", default="120:40", help="START:LEN steps to profile")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    from engine import EngineArgs, LLMEngine, SamplingParams

    kw = {}
    if args.max_num_seqs:
        kw["max_num_seqs"] = args.max_num_seqs
    if args.max_num_batched_tokens:
        kw["max_num_batched_tokens"] = args.max_num_batched_tokens
    eng = LLMEngine.from_engine_args(EngineArgs(
        model=shape_folder(args.model_shape), load_format="dummy", skip_tokenizer_init=True,
        seed=0, **kw))
    core = eng.core
    reqs = load_workload(args.workload, args.num_requests, args.workload_dir)
    prompts = random_prompt_token_ids(reqs, core.runner.vocab_size, seed=0)
    # Warm-up: kernel compilation for prefill and decode shapes.
    eng.add_request("warm", None, SamplingParams(max_tokens=4, ignore_eos=True, detokenize=False),
                    prompt_token_ids=prompts[0][:64])
    while eng.has_unfinished_requests():
        eng.step()
    for i, (r, p) in enumerate(zip(reqs, prompts)):
        eng.add_request(str(i), None, SamplingParams(temperature=1.0, max_tokens=r.output_len,
                                                     ignore_eos=True, detokenize=False),
                        prompt_token_ids=p)
    start, length = (int(x) for x in args.window.split(":"))
    rows: list[tuple[str, int, int, float]] = []
    prof = cprof = None
    torch.cuda.synchronize()
    t_run = time.perf_counter()
    while eng.has_unfinished_requests():
        i = len(rows)
        if i == start:
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
            prof.__enter__()
            cprof = cProfile.Profile()
            cprof.enable()
            t_win = time.perf_counter()
        t0 = time.perf_counter()
        eng.step()
        dt = time.perf_counter() - t0
        rows.append((*_kind(core), dt))
        if i == start + length - 1 and prof is not None:
            torch.cuda.synchronize()
            win_wall = time.perf_counter() - t_win
            cprof.disable()
            prof.__exit__(None, None, None)
    torch.cuda.synchronize()
    total = time.perf_counter() - t_run
    lines = [f"workload {args.workload} x{len(reqs)}: {total:.2f} s, {len(rows)} steps"]
    for kind in ("decode", "mixed", "idle"):
        ks = [r for r in rows if r[0] == kind]
        if not ks:
            continue
        wall = sum(r[3] for r in ks)
        lines.append(f"  {kind:6s}: {len(ks):5d} steps, {wall:6.2f} s wall, median "
                     f"{statistics.median(r[3] for r in ks) * 1e3:6.2f} ms, mean seqs "
                     f"{statistics.mean(r[1] for r in ks):6.1f}, mean tokens "
                     f"{statistics.mean(r[2] for r in ks):7.1f}")
    # Steps by batch-size bucket, to see the tail.
    for lo, hi in ((0, 64), (64, 256), (256, 10 ** 9)):
        ks = [r for r in rows if lo <= r[1] < hi and r[0] != "idle"]
        if ks:
            lines.append(f"  seqs in [{lo},{hi}): {len(ks)} steps, {sum(r[3] for r in ks):.2f} s")
    slow = sorted(range(len(rows)), key=lambda i: -rows[i][3])[:8]
    lines.append("  slowest steps: " + ", ".join(
        f"#{i} {rows[i][0]} {rows[i][2]} tok {rows[i][3] * 1e3:.0f} ms" for i in sorted(slow)))
    if prof is not None:
        events = [e for e in prof.key_averages() if e.device_time_total > 0]
        gpu_us = sum(e.self_device_time_total for e in events)
        win = rows[start:start + length]
        lines.append(f"window steps {start}..{start + length}: wall {win_wall * 1e3:.1f} ms, "
                     f"GPU kernels {gpu_us / 1e3:.1f} ms ({gpu_us / 1e3 / (win_wall * 1e3):.0%}); "
                     f"kinds {sorted({r[0] for r in win})}, mean seqs "
                     f"{statistics.mean(r[1] for r in win):.0f}")
        lines.append(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25))
        s = io.StringIO()
        pstats.Stats(cprof, stream=s).sort_stats("tottime").print_stats(30)
        lines.append(s.getvalue())
    report = "\n".join(lines)
    print(report)
    if args.output:
        with open(args.output, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
