"""From one engine's measurements to issue 13's records: `bench: "quantization"`, `params.case`,
and metrics `vs_bf16`, `vs_vllm` (above 1: pagedserve better) and, at batch 1, `over_floor`."""
from __future__ import annotations

import argparse
from typing import Any, Optional

from benchmarks.quant_cases import Case


def _ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    return num / den if num is not None and den else None


def case_metrics(case: Case, ours: dict, bf16: Optional[dict],
                 vllm: Optional[dict]) -> Optional[dict[str, Any]]:
    """The record metrics of one case from its engine's (and bf16's) results; None if it did
    not run."""
    base = bf16 or {}
    common = {"weight_bytes": ours.get("weight_bytes"),
              "bf16_weight_bytes": base.get("weight_bytes"),
              "num_kv_blocks": ours.get("num_kv_blocks"),
              "bf16_num_kv_blocks": base.get("num_kv_blocks"),
              "engine_load_s": ours.get("engine_load_s")}
    if case.kind == "throughput":
        m = ours.get("throughput", {}).get(case.workload)
        if m is None:
            return None
        ref = base.get("throughput", {}).get(case.workload, {}).get("output_tok_s")
        return {**{k: v for k, v in m.items() if k != "workload_summary"}, **common,
                "bf16_output_tok_s": ref, "vs_bf16": _ratio(m["output_tok_s"], ref),
                **vllm_metrics(case, m, vllm)}
    row = ours.get("decode", {}).get("batches", {}).get(str(case.batch))
    if row is None:
        return None
    ms = row["per_token_ms"]
    ref = base.get("decode", {}).get("batches", {}).get(str(case.batch), {}).get("per_token_ms")
    bw = ours.get("copy_bw_bytes_s")
    streamed = ours["weight_bytes"] - ours.get("lookup_table_bytes", 0)
    out = {"per_token_ms": ms, "t1_ms": row["t1_s"] * 1e3, "decode_tok_s": row["decode_tok_s"],
           "per_token_ms_min_spread": row["per_token_ms_min_spread"],
           "per_token_ms_max_spread": row["per_token_ms_max_spread"], **common,
           "streamed_weight_bytes": streamed, "copy_bw_bytes_s": bw,
           "bf16_per_token_ms": ref, "vs_bf16": _ratio(ref, ms),
           **vllm_metrics(case, {"per_token_ms": ms}, vllm)}
    if case.batch == 1 and bw:
        out["floor_ms"] = streamed / bw * 1e3
        out["over_floor"] = ms / out["floor_ms"]
        out["over_floor_all_weights"] = ms / (ours["weight_bytes"] / bw * 1e3)
    return out


def vllm_metrics(case: Case, ours: dict, vllm: Optional[dict]) -> dict[str, Any]:
    """vLLM's figure for the case and `vs_vllm` (tok/s: ours ÷ theirs; times: theirs ÷ ours)."""
    key = "output_tok_s" if case.kind == "throughput" else "per_token_ms"
    theirs = (vllm or {}).get(key)
    ratio = (_ratio(ours[key], theirs) if case.kind == "throughput"
             else _ratio(theirs, ours[key]))
    return {f"vllm_{key}": theirs, "vs_vllm": ratio}


def vllm_params(case: Case, vllm: dict) -> dict[str, Any]:
    if not vllm:
        return {}
    return {"vllm_versions": vllm.get("versions"),
            "vllm_quantization": vllm.get("engines", {}).get(case.engine.key,
                                                             {}).get("quantization")}


def case_params(case: Case, ours: dict, args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.model_shapes import shape_label
    p: dict[str, Any] = {"case": case.name, "kind": case.kind, "engine": case.engine.key,
                         "method": ours.get("quantization"),
                         "quantization": case.engine.quantization,
                         "quant_config": case.engine.quant_config,
                         "kv_cache_dtype": ours.get("kv_cache_dtype"),
                         "model": shape_label(args.model_shape), "dummy_weights": True,
                         "dtype": args.dtype, "seed": args.seed}
    if case.kind == "throughput":
        summary = ours["throughput"][case.workload].get("workload_summary", {})
        p.update(workload=case.workload, num_prompts_cap=args.num_prompts, **summary)
    else:
        p.update(batch=case.batch, decode_tokens=args.decode_tokens,
                 decode_input=args.decode_input, decode_method=ours["decode"]["method"])
    return p


def record_case(case: Case, ours: dict, bf16: Optional[dict], vllm: dict,
                args: argparse.Namespace) -> Optional[dict[str, Any]]:
    """The case's record (appended to results/quantization.jsonl on a GPU or with --record)."""
    import torch

    from benchmarks.record import append_result, make_record
    metrics = case_metrics(case, ours, bf16, vllm.get("cases", {}).get(case.name))
    if metrics is None:
        return None
    params = {**case_params(case, ours, args), **vllm_params(case, vllm)}
    if torch.cuda.is_available() or args.record:
        return append_result("quantization", params, metrics, args.results_dir)
    return make_record("quantization", params, metrics)


def format_summary(records: list[dict], errors: list[str]) -> str:
    def f(v: Any, fmt: str = "{:.3f}") -> str:
        return "n/a" if v is None else fmt.format(v)

    lines = ["quantization cases:"]
    for r in records:
        m = r["metrics"]
        figure = (f"{f(m.get('output_tok_s'), '{:.0f}')} output tok/s" if "output_tok_s" in m
                  else f"{f(m.get('per_token_ms'))} ms/token")
        lines.append(f"  {r['params']['case']:32s} {figure:>22s}  vs_bf16 {f(m.get('vs_bf16'))}  "
                     f"vs_vllm {f(m.get('vs_vllm'))}  over_floor {f(m.get('over_floor'))}")
    lines += [f"  ERROR {e}" for e in errors]
    return "\n".join(lines)
