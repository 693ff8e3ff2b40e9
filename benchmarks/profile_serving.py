"""The serving path's engine steps under an online load: host vs GPU time per step.

    python benchmarks/profile_serving.py --model-shape llama3-8b --request-rate 32 \
        --workload sharegpt_like --num-requests 500

Requests arrive as a Poisson process at `--request-rate` (inf: all at once), as
`benchmarks/serving.py` sends them, but straight into an `LLMEngine` (no HTTP, no ZeroMQ): what
is left between these figures and the server's is the frontend. Each step is classed by what
it carries (`decode`, or `mixed` when some prompt tokens ride along) and how it ran (`graph` or
`eager`); per class it reports host time (schedule, input building and kernel launch or graph
replay, i.e. `runner.launch`), GPU time (CUDA events around the launched work) and how long
the GPU idled before the step. Also engine-side TTFT/TPOT, GPU busy fraction and the
CUDA-graph coverage. A report, never a pass/fail test; `--output` writes it as JSON too.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.model_shapes import add_model_args, resolve_model  # noqa: E402
from benchmarks.workloads import load_workload, random_prompt_token_ids  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))] if xs else float("nan")


class StepTimer:
    """Wraps runner.launch (host time; CUDA events before and after its GPU work)."""

    def __init__(self, runner):
        self.runner = runner
        self.rows: list[dict] = []
        self.cuda = runner.device.type == "cuda"
        self._launch = runner.launch
        runner.launch = self.launch
        self._replayed = False
        self._run = None
        if runner.graphs is not None:
            run = self._run = runner.graphs.run

            def counted(inputs):
                self._replayed = True
                return run(inputs)
            runner.graphs.run = counted

    def restore(self) -> None:
        self.runner.launch = self._launch
        if self.runner.graphs is not None:
            self.runner.graphs.run = self._run

    def launch(self, out, prev=None, **kw):
        events = None
        if self.cuda:
            events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        self._replayed = False
        t0 = time.perf_counter()
        if events:
            events[0].record()
        step = self._launch(out, prev, **kw)
        if events:
            events[1].record()
        host = time.perf_counter() - t0
        sched = out.scheduled
        tokens = sum(s.num_tokens for s in sched)
        kind = "decode" if tokens == len(sched) else "mixed"
        self.rows.append(dict(kind=f"{kind}/{'graph' if self._replayed else 'eager'}",
                              seqs=len(sched), tokens=tokens, host_ms=host * 1e3, events=events))
        return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--workload", default="sharegpt_like")
    ap.add_argument("--workload-dir", default=None)
    ap.add_argument("--num-requests", type=int, default=500)
    ap.add_argument("--request-rate", type=float, nargs="+", default=[32.0],
                    help="one run per rate, on the same engine ('inf': all at once)")
    ap.add_argument("--max-num-batched-tokens", type=int, default=None)
    ap.add_argument("--max-cuda-graph-tokens", type=int, default=None)
    ap.add_argument("--gpu-memory-utilization", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default=None)
    ap.add_argument("--dump-steps", action="store_true",
                    help="keep every step's row (kind, seqs, tokens, host/gpu/idle ms) in --output")
    args = ap.parse_args()
    from engine import EngineArgs, LLMEngine, SamplingParams

    spec = resolve_model(args.model, args.model_shape)
    kw = dict(spec.engine_kwargs)
    if args.max_num_batched_tokens:
        kw["max_num_batched_tokens"] = args.max_num_batched_tokens
    if args.max_cuda_graph_tokens is not None:
        kw["max_cuda_graph_tokens"] = args.max_cuda_graph_tokens
    if args.gpu_memory_utilization:
        kw["gpu_memory_utilization"] = args.gpu_memory_utilization
    eng = LLMEngine.from_engine_args(EngineArgs(model=spec.model, seed=0, **kw))
    reqs = load_workload(args.workload, args.num_requests, args.workload_dir)
    prompts = random_prompt_token_ids(reqs, eng.core.runner.vocab_size, seed=args.seed)

    def params(n):
        return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, detokenize=False)

    for i in range(3):  # warm-up
        eng.add_request(f"warm{i}", None, params(8), prompt_token_ids=prompts[i][:100 + 40 * i])
    while eng.has_unfinished_requests():
        eng.step()
    gc.collect()
    gc.freeze()  # as the server's engine core process does after loading
    reports = []
    for rate in args.request_rate:
        report = run_load(eng, reqs, prompts, params, rate, args.seed, args.dump_steps)
        report["params"] = dict(vars(args), request_rate=rate, model=spec.label)
        print(f"== request rate {rate}")
        print_report(report)
        reports.append(report)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(reports if len(reports) > 1 else reports[0], f, indent=2)


def run_load(eng, reqs, prompts, params, rate: float, seed: int, dump: bool = False) -> dict:
    """One load at `rate` through `eng`; returns summarize()'s report."""
    timer = StepTimer(eng.core.runner)
    rng = random.Random(seed + 1)
    arrivals, t = [], 0.0
    for _ in reqs:
        arrivals.append(t)
        if rate != float("inf"):
            t += rng.expovariate(rate)
    added, first, last, ntok = {}, {}, {}, {}
    nxt = 0
    sync()
    t_run = time.perf_counter()
    while nxt < len(reqs) or eng.has_unfinished_requests():
        now = time.perf_counter() - t_run
        while nxt < len(reqs) and arrivals[nxt] <= now:
            rid = f"{rate}-{nxt}"
            eng.add_request(rid, None, params(reqs[nxt].output_len),
                            prompt_token_ids=prompts[nxt])
            added[rid] = time.perf_counter()
            nxt += 1
        if not eng.has_unfinished_requests():
            time.sleep(max(0.0, arrivals[nxt] - now))
            continue
        for o in eng.step():
            n = len(o.outputs[0].token_ids)
            if n and o.request_id not in first:
                first[o.request_id] = time.perf_counter()
            if n:
                last[o.request_id], ntok[o.request_id] = time.perf_counter(), n
    sync()
    wall = time.perf_counter() - t_run
    timer.restore()
    report = summarize(timer.rows, wall, added, first, last, ntok)
    if dump:
        report["step_rows"] = timer.rows
    return report

def summarize(rows, wall, added, first, last, ntok) -> dict:
    prev_end = None
    for r in rows:
        ev = r.pop("events")
        if ev is None:  # CPU: no device timeline
            r["gpu_ms"] = r["idle_before_ms"] = float("nan")
            continue
        r["gpu_ms"] = ev[0].elapsed_time(ev[1])
        r["idle_before_ms"] = (max(0.0, prev_end.elapsed_time(ev[0]))
                              if prev_end is not None else 0.0)
        prev_end = ev[1]
    by = defaultdict(list)
    for r in rows:
        by[r["kind"]].append(r)
    kinds = {}
    for k, rs in sorted(by.items()):
        kinds[k] = dict(steps=len(rs), mean_seqs=statistics.mean(r["seqs"] for r in rs),
                        mean_tokens=statistics.mean(r["tokens"] for r in rs),
                        host_ms_p50=pct([r["host_ms"] for r in rs], 50),
                        host_ms_p99=pct([r["host_ms"] for r in rs], 99),
                        gpu_ms_p50=pct([r["gpu_ms"] for r in rs], 50),
                        gpu_ms_p99=pct([r["gpu_ms"] for r in rs], 99),
                        gpu_idle_before_ms_mean=statistics.mean(r["idle_before_ms"] for r in rs))
    gpu_total = sum(r["gpu_ms"] for r in rows) / 1e3
    ttft = [(first[i] - added[i]) * 1e3 for i in first]
    tpot = [(last[i] - first[i]) * 1e3 / (ntok[i] - 1) for i in first if ntok.get(i, 0) > 1]
    return dict(wall_s=wall, steps=len(rows), gpu_busy=gpu_total / wall, kinds=kinds,
                output_tok_s=sum(ntok.values()) / wall,
                ttft_ms_p50=pct(ttft, 50), ttft_ms_p99=pct(ttft, 99),
                tpot_ms_p50=pct(tpot, 50), tpot_ms_p99=pct(tpot, 99))


def print_report(rep: dict) -> None:
    print(f"{rep['steps']} steps in {rep['wall_s']:.1f} s, GPU busy {rep['gpu_busy']:.0%}, "
          f"{rep['output_tok_s']:.0f} out tok/s; engine-side TTFT p50/p99 "
          f"{rep['ttft_ms_p50']:.1f}/{rep['ttft_ms_p99']:.1f} ms, TPOT p50/p99 "
          f"{rep['tpot_ms_p50']:.2f}/{rep['tpot_ms_p99']:.2f} ms")
    print(f"{'kind':14s} {'steps':>6s} {'seqs':>6s} {'tokens':>7s} {'host p50':>9s} "
          f"{'host p99':>9s} {'gpu p50':>8s} {'gpu p99':>8s} {'idle':>6s}")
    for k, v in rep["kinds"].items():
        print(f"{k:14s} {v['steps']:6d} {v['mean_seqs']:6.1f} {v['mean_tokens']:7.1f} "
              f"{v['host_ms_p50']:9.2f} {v['host_ms_p99']:9.2f} {v['gpu_ms_p50']:8.2f} "
              f"{v['gpu_ms_p99']:8.2f} {v['gpu_idle_before_ms_mean']:6.2f}")


if __name__ == "__main__":
    main()
