"""Offline throughput of the engine on a shared workload, against HF transformers and the roofline.

Every request's prompt is random token ids of its `input_len`; generation runs exactly its
`output_len` tokens (`ignore_eos`). All requests are handed to `LLM.generate` at once; the wall
time of that call (model loading and a short warm-up excluded) gives requests/s, output tok/s and
total (prompt + output) tok/s. Engine stats give KV waste %, sharing savings, peak running requests
and preemptions. `roofline_fraction` = total tok/s / (matmul FLOP/s measured in this run /
(2 x matmul parameters)); `--baseline hf` adds HF static batching and `speedup_vs_hf`.

    python benchmarks/throughput.py --workload alpaca_like --num-requests 16 --output-json out.json
    python benchmarks/throughput.py --workload sharegpt_like --model-shape llama3-8b --baseline hf

On a GPU the result is appended to benchmarks/results/throughput.jsonl (on CPU with --record).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from typing import Any, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from benchmarks.kv_metrics import StepProbe, kv_metrics, snapshot
from benchmarks.model_shapes import (ModelSpec, add_model_args, hf_config_of, max_len_of,
                                     parameter_counts, resolve_model, special_token_ids,
                                     vocab_size_of)
from benchmarks.roofline import measure_matmul_flops, roofline_tok_s
from benchmarks.workloads import (WorkloadRequest, add_workload_args, clip_to_context,
                                  load_workload, random_prompt_token_ids, summarize)


# CLI options recorded in a result's params when set.
RECORDED_ARGS = ("dtype", "block_size", "num_kv_blocks", "max_num_seqs", "max_num_batched_tokens",
                 "max_cuda_graph_tokens",
                 "preemption_mode", "enable_prefix_caching", "num_threads", "baseline",
                 "hf_time_budget", "hf_num_requests", "hf_max_batch_size")


def sampling_params_for(req: WorkloadRequest, n: int, beam_width: int,
                        seed: Optional[int] = None) -> Any:
    """Exactly `output_len` tokens; sampling at temperature 1, beam search greedy.

    No per-request seed by default: the engine's global seed keeps runs reproducible without
    timing a per-request generator path users rarely take.
    """
    from engine import SamplingParams

    common = dict(max_tokens=req.output_len, ignore_eos=True, detokenize=False)
    if beam_width > 1:
        return SamplingParams(n=beam_width, best_of=beam_width, use_beam_search=True,
                              temperature=0.0, length_penalty=1.0, early_stopping=False, **common)
    if n > 1:
        return SamplingParams(n=n, temperature=1.0, seed=seed, **common)
    return SamplingParams(n=1, temperature=1.0, seed=seed, **common)


def build_llm(spec: ModelSpec, args: argparse.Namespace) -> Any:
    """The engine for a spec, with the CLI's scheduling/cache options where given."""
    from engine import LLM

    kwargs: dict[str, Any] = dict(spec.engine_kwargs)
    for name in ("dtype", "device", "block_size", "num_kv_blocks", "max_model_len", "max_num_seqs",
                 "max_num_batched_tokens", "max_cuda_graph_tokens", "preemption_mode",
                 "enforce_eager", "enable_prefix_caching", "swap_space", "gpu_memory_utilization"):
        val = getattr(args, name, None)
        if val is not None and val is not False:
            kwargs[name] = val
    return LLM(model=spec.model, seed=args.seed, **kwargs)


def workload_prompts(config: Any, reqs: Sequence[WorkloadRequest], max_len: int, seed: int
                     ) -> tuple[list[WorkloadRequest], list[list[int]], int]:
    """The requests clipped to the context, their random prompt ids (special tokens excluded)
    and how many were clipped."""
    clipped = clip_to_context(reqs, max_len)
    prompts = random_prompt_token_ids(clipped, vocab_size_of(config), seed,
                                      special_token_ids(config))
    return clipped, prompts, sum(a != b for a, b in zip(reqs, clipped))


def run_engine(llm: Any, prompts: Sequence[list[int]], reqs: Sequence[WorkloadRequest],
               n: int, beam_width: int, warmup: bool = True, probe: bool = True,
               ) -> dict[str, Any]:
    """One timed `LLM.generate` over the whole workload; metrics from outputs and stats.

    `probe` reads the engine's stats after every step (per-step KV waste, peaks, step times).
    """
    if warmup:  # first-call costs (kernel compilation, graph capture) are not throughput
        warm = [WorkloadRequest(min(8, reqs[0].input_len), 4)]
        llm.generate([{"prompt_token_ids": prompts[0][:8]}],
                     [sampling_params_for(warm[0], 1, 1)], use_tqdm=False)
    params = [sampling_params_for(r, n, beam_width) for r in reqs]
    inputs = [{"prompt_token_ids": list(p)} for p in prompts]
    before = snapshot(llm)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    with StepProbe(llm, enabled=probe) as step_probe:
        t0 = time.perf_counter()
        outputs = llm.generate(inputs, params, use_tqdm=False)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    after = snapshot(llm)

    prompt_tok = sum(len(o.prompt_token_ids) for o in outputs)
    out_tok = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    expected = sum(r.output_len for r in reqs) * max(n, beam_width)
    metrics: dict[str, Any] = {
        "elapsed_s": elapsed,
        "num_requests": len(outputs),
        "prompt_tokens": prompt_tok,
        "output_tokens": out_tok,
        "expected_output_tokens": expected,
        "requests_s": len(outputs) / elapsed,
        "output_tok_s": out_tok / elapsed,
        "total_tok_s": (prompt_tok + out_tok) / elapsed,
    }
    metrics.update(kv_metrics(before, after, step_probe))
    return metrics


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=1, help="parallel samples per request")
    parser.add_argument("--beam-width", type=int, default=1, help="beam search width (>1: on)")
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--num-kv-blocks", type=int, default=None)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=None)
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--preemption-mode", default=None, choices=["recompute", "swap", "auto"])
    parser.add_argument("--gpu-memory-utilization", type=float, default=None)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--max-cuda-graph-tokens", type=int, default=None,
                        help="mixed prefill+decode steps up to this many tokens replay graphs")
    parser.add_argument("--enable-prefix-caching", action="store_true")
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument("--no-step-probe", action="store_true",
                        help="do not read stats after every step (KV waste slot-weighted only)")
    parser.add_argument("--num-threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    from benchmarks.hf_baseline import add_hf_args

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_args(parser)
    add_model_args(parser)
    add_engine_args(parser)
    parser.add_argument("--baseline", choices=["none", "hf"], default="none")
    add_hf_args(parser)
    parser.add_argument("--no-roofline", action="store_true", help="skip the matmul measurement")
    parser.add_argument("--output-json", default=None, help="write the result record here")
    parser.add_argument("--record", action="store_true",
                        help="append to benchmarks/results/throughput.jsonl even on CPU")
    args = parser.parse_args(argv)
    if args.n > 1 and args.beam_width > 1:
        parser.error("--n and --beam-width are exclusive (beam search returns --beam-width beams)")
    return args


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    spec = resolve_model(args.model, args.model_shape)
    reqs = load_workload(args.workload, args.num_requests, args.workload_dir)

    # The matmul peak is measured before the engine takes its share of device memory.
    flops = None if args.no_roofline else measure_matmul_flops(args.device)

    t0 = time.perf_counter()
    llm = build_llm(spec, args)
    load_s = time.perf_counter() - t0
    config = hf_config_of(spec, llm)
    clipped, prompts, num_clipped = workload_prompts(
        config, reqs, args.max_model_len or max_len_of(config), args.seed)
    metrics = run_engine(llm, prompts, clipped, args.n, args.beam_width,
                         warmup=not args.no_warmup, probe=not args.no_step_probe)

    metrics["engine_load_s"] = load_s
    counts = parameter_counts(config)
    metrics.update(counts)
    if flops is not None:
        metrics.update(flops)
        metrics["roofline_tok_s"] = roofline_tok_s(flops["matmul_flops"], counts["matmul_params"])
        metrics["roofline_fraction"] = metrics["total_tok_s"] / metrics["roofline_tok_s"]

    if args.baseline == "hf":
        from benchmarks.hf_baseline import run_baseline

        del llm  # the baseline needs the memory the engine's KV pool held
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        metrics.update(run_baseline(spec, clipped, prompts, args, n=args.n,
                                    beam_width=args.beam_width))
        if metrics.get("hf_output_tok_s"):
            metrics["speedup_vs_hf"] = metrics["output_tok_s"] / metrics["hf_output_tok_s"]

    params = {"workload": args.workload, "model": spec.label, "dummy_weights": spec.dummy,
              "n": args.n, "beam_width": args.beam_width, "seed": args.seed,
              "num_clipped_to_context": num_clipped,
              **{k: v for k, v in summarize(clipped).items() if k != "num_requests"},
              "num_requests": len(reqs),
              **{k: getattr(args, k) for k in RECORDED_ARGS if getattr(args, k) is not None}}
    from benchmarks.record import append_result, make_record

    if torch.cuda.is_available() or args.record:
        result = append_result("throughput", params, metrics)
    else:
        result = make_record("throughput", params, metrics)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)
    print(format_summary(result))
    return result


def format_summary(result: dict[str, Any]) -> str:
    """A few human-readable lines of the headline numbers."""
    m, p = result["metrics"], result["params"]

    def f(key: str, fmt: str = "{:.1f}") -> str:
        val = m.get(key)
        return "n/a" if val is None else fmt.format(val)

    lines = [f"throughput {p['workload']} ({p['num_requests']} requests, model {p['model']}, "
             f"{result['device']})",
             f"  requests/s {f('requests_s', '{:.2f}')}  output tok/s {f('output_tok_s')}  "
             f"total tok/s {f('total_tok_s')}",
             f"  KV waste {f('kv_waste_pct', '{:.1f}%')}  sharing saved "
             f"{f('sharing_saved_pct', '{:.1f}%')}  peak running {f('peak_running_requests', '{}')}"
             f"  preemptions {f('preemptions', '{}')}",
             f"  roofline fraction {f('roofline_fraction', '{:.3f}')} "
             f"(matmul {f('matmul_flops', '{:.3g}')} FLOP/s {m.get('matmul_dtype', '')})"]
    if "speedup_vs_hf" in m:
        lines.append(f"  HF static batching {f('hf_output_tok_s')} output tok/s on "
                     f"{f('hf_fraction', '{:.0%}')} of the workload: speedup {f('speedup_vs_hf')}x")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
