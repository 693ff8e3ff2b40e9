"""Quantized pagedserve against its own bf16 and against vLLM on the same quantization (issue 13).

Cases (`--cases`, comma separated, default all; defined in quant_cases.py):
  fp8_w8a8_kv_fp8_sharegpt_like  --quantization fp8 --kv-cache-dtype fp8: offline output tok/s
                                 on sharegpt_like (first --num-prompts requests) vs bf16's run
  int8_sharegpt_like             compressed-tensors int8 W8A8 (per-channel / per-token): idem
  w4a16_bs1, w4a16_bs64          GPTQ 4-bit group 128: per-token decode time at batch 1 / 64
  awq_bs1                        AWQ 4-bit group 128: per-token decode time at batch 1
All engines use dummy weights of `--model-shape` (random quantized weights of the real layout).
Throughput is measured exactly as throughput.py measures it (one timed `LLM.generate` over the
requests, a short warm-up first; the step probe off, as on vLLM's side). Decode time is the vLLM
peer's gen_latency.py method (benchmarks/decode_latency.py): (t(256 tokens) - t(1 token)) / 255,
medians, fresh random prompts.

Metrics (above 1 is better for pagedserve): `vs_bf16` = quantized ÷ bf16 (tok/s; for times
bf16 ÷ quantized), `vs_vllm` = ours ÷ vLLM's (times: vLLM's ÷ ours; with `--vllm-json` written by
vllm_quant_side.py), and at batch 1 `over_floor` = decode step ÷ (bytes the step streams ÷
measured device copy bandwidth); the streamed bytes are the engine's weight bytes (quantized
layers at their packed size) less the embedding table, which a step only indexes
(`over_floor_all_weights` counts it too, as latency.py does).

Each engine (bf16 first, then one per quantization) runs in its own subprocess, so a failure or a
CUDA fault in one case leaves the others standing; errors are listed in `--out`, and each case
that ran is appended to benchmarks/results/quantization.jsonl (on a GPU, or with --record).

    python benchmarks/quantization.py --model-shape llama3-8b --workload-dir ../shared/workloads \\
        --num-prompts 500 [--vllm-json vllm_quant.json] --out quant.json
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from typing import Any, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.isolated import run_isolated
from benchmarks.quant_cases import (BF16, CASES, ENGINES, Case, EngineSpec,
                                    group_by_engine, select_cases, tasks_of)
from benchmarks.quant_records import format_summary, record_case, vllm_metrics, vllm_params


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="all", help="comma-separated case names, or all")
    ap.add_argument("--model-shape", default="llama3-8b",
                    help="a configs/models/ name or a path to a config .json (dummy weights)")
    ap.add_argument("--dtype", default="auto", help="auto: bf16 on GPU, fp32 on CPU")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--gpu-memory-utilization", type=float, default=None)
    ap.add_argument("--workload-dir", default=None)
    ap.add_argument("--num-prompts", type=int, default=500,
                    help="first N requests of a throughput case's workload (fewer if it has fewer)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decode-tokens", type=int, default=256, help="gen_latency's long run")
    ap.add_argument("--decode-input", type=int, default=128, help="decode cases' prompt length")
    ap.add_argument("--vllm-json", default=None, help="vllm_quant_side.py's output")
    ap.add_argument("--attach-vllm", default=None, metavar="EARLIER_OUT",
                    help="run nothing: complete an earlier --out's records with --vllm-json's "
                         "figures (vLLM run in another device call); --record appends them")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 runs (no vs_bf16)")
    ap.add_argument("--case-timeout", type=float, default=240.0,
                    help="seconds one engine's subprocess may take")
    ap.add_argument("--out", default=None, help="write every record and error here (JSON)")
    ap.add_argument("--record", action="store_true", help="append to results even on CPU")
    ap.add_argument("--results-dir", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ---- one engine (runs in a subprocess) ---------------------------------------------------------

GEN_LATENCY_MAX_ID = 128000  # its prompts are ids 1..127999 (below Llama-3's specials)


def copy_bandwidth_of(device: Any) -> float:
    """Device copy bandwidth in bytes/s (read + written), as latency.py's floor uses it."""
    import torch
    if device.type == "cuda":
        from benchmarks.kernel_bench._common import copy_bandwidth
        return copy_bandwidth(device)
    src = torch.ones(16 << 20, dtype=torch.float32)  # CPU: 64 MiB, best of a few copies
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / best


def lookup_table_bytes(model: Any) -> int:
    """Bytes of embedding tables a decode step only indexes (one row per token); a table tied to
    the LM head is streamed by the head and not counted."""
    from engine.layers.vocab_parallel import ParallelLMHead, VocabParallelEmbedding
    heads = {id(m.weight) for m in model.modules() if isinstance(m, ParallelLMHead)}
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
               if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)
               and id(m.weight) not in heads)


def run_one_engine(spec: EngineSpec, cases: list[Case], args: argparse.Namespace,
                   save) -> dict[str, Any]:
    """Load `spec`'s engine once, run every workload and decode batch `cases` need; `save(res)`
    after each step so a later crash keeps what was measured."""
    import torch

    from benchmarks.model_shapes import hf_config_of, max_len_of, resolve_model
    from benchmarks.throughput import build_llm, run_engine, workload_prompts
    from benchmarks.workloads import load_workload, summarize
    workloads, batches = tasks_of(cases)
    res: dict[str, Any] = {"engine": spec.key, "errors": [], "throughput": {}}
    model = resolve_model(None, args.model_shape)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    if batches:  # measured before the engine takes its share of device memory
        res["copy_bw_bytes_s"] = copy_bandwidth_of(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the engine sizes its KV pool from free memory
    kwargs = {**model.engine_kwargs, "quantization": spec.quantization,
              "kv_cache_dtype": spec.kv_cache_dtype}
    if spec.quant_config is not None:
        kwargs["hf_overrides"] = {"quantization_config": spec.quant_config}
    model = replace(model, engine_kwargs=kwargs)
    t0 = time.perf_counter()
    try:
        llm = build_llm(model, args)
    except Exception as e:
        res["errors"].append(f"{spec.key} load: {type(e).__name__}: {e}")
        save(res)
        raise
    res["engine_load_s"] = time.perf_counter() - t0
    stats = llm.stats()
    res.update({"quantization": stats.get("quantization") or "none (dense)",
                "weight_bytes": stats["weight_bytes"],
                "lookup_table_bytes": lookup_table_bytes(llm.llm_engine.core.runner.model),
                "kv_cache_dtype": stats.get("kv_cache_dtype"),
                "num_kv_blocks": stats.get("num_total_blocks"),
                "block_size": stats.get("block_size")})
    print(f"[{spec.key}] {res['quantization']}: weights {res['weight_bytes'] / 2**30:.2f} GiB, "
          f"KV {res['kv_cache_dtype']} x {res['num_kv_blocks']} blocks, loaded in "
          f"{res['engine_load_s']:.1f} s", flush=True)
    save(res)
    config = hf_config_of(model, llm)
    for wl in workloads:
        try:
            reqs = load_workload(wl, None, args.workload_dir)[:args.num_prompts]
            clipped, prompts, n_clipped = workload_prompts(config, reqs, max_len_of(config),
                                                           args.seed)
            m = run_engine(llm, prompts, clipped, 1, 1, warmup=True, probe=False)
            m.update(num_clipped_to_context=n_clipped, workload_summary=summarize(clipped))
            res["throughput"][wl] = m
            print(f"[{spec.key}] {wl}: {m['output_tok_s']:.0f} output tok/s over "
                  f"{m['elapsed_s']:.2f} s", flush=True)
        except Exception as e:  # noqa: BLE001 - recorded, the other tasks go on
            res["errors"].append(f"{spec.key} {wl}: {type(e).__name__}: {e}")
            traceback.print_exc()
        save(res)
    if batches:
        try:
            if llm.llm_engine.core.runner.vocab_size < GEN_LATENCY_MAX_ID:
                raise ValueError(f"gen_latency.py draws prompt ids up to {GEN_LATENCY_MAX_ID - 1}"
                                 f": the model's vocabulary "
                                 f"({llm.llm_engine.core.runner.vocab_size}) must hold them")
            from benchmarks.decode_latency import measure

            from engine import SamplingParams

            def sp(n: int) -> Any:
                return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True,
                                      detokenize=False)
            print(f"[{spec.key}] decode (generate difference):", flush=True)
            res["decode"] = measure(llm, sp, batches=tuple(batches), inp=args.decode_input,
                                    out=args.decode_tokens)
        except Exception as e:  # noqa: BLE001
            res["errors"].append(f"{spec.key} decode: {type(e).__name__}: {e}")
            traceback.print_exc()
        save(res)
    llm.shutdown()
    del llm
    gc.collect()
    return res


def worker_main(args: argparse.Namespace) -> None:
    def save(res: dict) -> None:
        with open(args.worker_out, "w") as f:
            json.dump(res, f, default=str)

    run_one_engine(ENGINES[args.worker], select_cases(args.cases), args, save)


# ---- orchestration and records ----------------------------------------------------------------

def run_worker(spec: EngineSpec, cases: list[Case], argv: list[str],
               timeout: float) -> dict[str, Any]:
    """`spec`'s engine in a subprocess; its result (possibly partial) plus any failure."""
    fd, path = tempfile.mkstemp(prefix=f"quant-{spec.key}-", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--cases",
           ",".join(c.name for c in cases), "--worker", spec.key, "--worker-out", path]
    failure = run_isolated(cmd, timeout, spec.key)
    try:
        with open(path) as f:
            res = json.load(f)
    except (OSError, ValueError):
        res = {"engine": spec.key, "errors": [], "throughput": {}}
    finally:
        os.unlink(path)
    if failure:
        res["errors"].append(failure)
    return res


def load_vllm(path: Optional[str]) -> dict[str, Any]:
    if not path:
        return {}
    with open(path) as f:
        return json.load(f)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return {}
    if args.attach_vllm:
        return attach_vllm(args)
    cases = select_cases(args.cases)
    vllm = load_vllm(args.vllm_json)
    groups = ([] if args.no_bf16 else [(BF16, [])]) + group_by_engine(cases)
    results: dict[str, dict] = {}
    summary: dict[str, Any] = {"records": [], "errors": [f"vllm: {e}"
                                                        for e in vllm.get("errors", [])]}
    for spec, group in groups:
        t0 = time.perf_counter()
        # bf16 runs every case's workload and batch size: the reference of each ratio.
        res = run_worker(spec, group or cases, argv, args.case_timeout)
        res["wall_s"] = time.perf_counter() - t0
        results[spec.key] = res
        summary["errors"] += res["errors"]
        print(f"[{spec.key}] done in {res['wall_s']:.0f} s", flush=True)
        # Records as soon as a case's engine is done: a device call cut short keeps them.
        for case in group:
            rec = record_case(case, res, results.get(BF16.key), vllm, args)
            if rec is None:
                summary["errors"].append(f"{case.name}: no measurement (see the errors above)")
            else:
                summary["records"].append(rec)
        summary["engines"] = {k: {kk: vv for kk, vv in v.items()
                                  if kk not in ("throughput", "decode")}
                              for k, v in results.items()}
        if args.out:
            with open(args.out, "w") as f:
                json.dump(summary, f, indent=1, default=str)
    print(format_summary(summary["records"], summary["errors"]))
    return summary


def attach_vllm(args: argparse.Namespace) -> dict[str, Any]:
    """An earlier run's records with vLLM's figures and `vs_vllm` filled in."""
    from benchmarks.record import append_record
    vllm = load_vllm(args.vllm_json)
    if not vllm:
        raise SystemExit("--attach-vllm needs --vllm-json")
    with open(args.attach_vllm) as f:
        summary = json.load(f)
    for rec in summary["records"]:
        case = CASES[rec["params"]["case"]]
        rec["metrics"].update(vllm_metrics(case, rec["metrics"],
                                           vllm.get("cases", {}).get(case.name)))
        rec["params"].update(vllm_params(case, vllm))
        if args.record:
            append_record(rec, args.results_dir)
    summary["errors"] += [f"vllm: {e}" for e in vllm.get("errors", [])]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1, default=str)
    print(format_summary(summary["records"], summary["errors"]))
    return summary


if __name__ == "__main__":
    main()
