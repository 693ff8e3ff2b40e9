"""KV memory saved by block sharing: parallel sampling and beam search on alpaca_like.

For each configuration (n = 2/4/6 parallel samples, beam width 2/4/6, and n = 1 as reference) the
same requests run through `LLM.generate` and the engine's accounting compares, step by step, the
logical blocks the sequences map (what they would hold as private copies, i.e. the same requests
run without sharing) with the physical blocks actually in use:

    saved % = 1 - physical / logical   (averaged over steps; also at the peak)

alongside KV waste % (allocated-but-unused slots). The PagedAttention paper reports 6.1-9.8%
(parallel sampling) and 37.6-55.2% (beam search) saved on its Alpaca runs.

    python benchmarks/sharing.py                       # default model on CPU, first 32 requests
    python benchmarks/sharing.py --model-shape llama3-8b --num-requests 1000   # on a GPU
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from typing import Any, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from benchmarks.model_shapes import (add_model_args, hf_config_of, max_len_of, resolve_model,
                                     special_token_ids, vocab_size_of)
from benchmarks.throughput import add_engine_args, build_llm, run_engine
from benchmarks.workloads import (add_workload_args, clip_to_context, load_workload,
                                  random_prompt_token_ids)

REPORTED = ("kv_waste_pct", "sharing_saved_pct", "peak_sharing_saved_pct", "peak_blocks",
            "peak_logical_blocks", "preemptions", "output_tok_s", "elapsed_s")
PAPER = {"parallel": "6.1-9.8%", "beam": "37.6-55.2%"}


def configurations(modes: list[str], widths: list[int]) -> list[tuple[str, int]]:
    """(mode, width) pairs in run order; ('single', 1) first as the no-sharing reference."""
    out = [("single", 1)]
    for mode in modes:
        out.extend((mode, w) for w in widths)
    return out


def render_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the sharing runs."""
    def cell(val: Any, fmt: str) -> str:
        return "n/a" if val is None else fmt.format(val)

    head = ("| mode | width | saved (avg) | saved (peak) | KV waste | peak blocks phys/logical "
            "| preemptions | output tok/s |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        m = r["metrics"]
        lines.append(
            f"| {r['mode']} | {r['width']} | {cell(m.get('sharing_saved_pct'), '{:.1f}%')} "
            f"| {cell(m.get('peak_sharing_saved_pct'), '{:.1f}%')} "
            f"| {cell(m.get('kv_waste_pct'), '{:.1f}%')} "
            f"| {cell(m.get('peak_blocks'), '{}')}/{cell(m.get('peak_logical_blocks'), '{}')} "
            f"| {cell(m.get('preemptions'), '{}')} | {cell(m.get('output_tok_s'), '{:.1f}')} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_args(parser, default="alpaca_like")
    add_model_args(parser)
    add_engine_args(parser)
    parser.add_argument("--modes", nargs="+", default=["parallel", "beam"],
                        choices=["parallel", "beam"])
    parser.add_argument("--widths", nargs="+", type=int, default=[2, 4, 6])
    parser.add_argument("--output-json", default=None)
    parser.add_argument("--record", action="store_true",
                        help="append to benchmarks/results/sharing.jsonl even on CPU")
    args = parser.parse_args(argv)
    if args.num_requests is None:
        args.num_requests = 1000 if torch.cuda.is_available() else 32

    spec = resolve_model(args.model, args.model_shape)
    reqs = load_workload(args.workload, args.num_requests, args.workload_dir)
    from benchmarks.record import append_result, make_record

    rows: list[dict[str, Any]] = []
    prompts: Optional[list[list[int]]] = None
    for mode, width in configurations(args.modes, args.widths):
        # A fresh engine per configuration, so peaks and counters cover this run alone.
        llm = build_llm(spec, args)
        if prompts is None:
            config = hf_config_of(spec, llm)
            reqs = clip_to_context(reqs, args.max_model_len or max_len_of(config))
            prompts = random_prompt_token_ids(reqs, vocab_size_of(config), args.seed,
                                              special_token_ids(config))
        n = width if mode == "parallel" else 1
        beam = width if mode == "beam" else 1
        metrics = run_engine(llm, prompts, reqs, n, beam, warmup=False,
                             probe=not args.no_step_probe)
        del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        params = {"workload": args.workload, "model": spec.label, "dummy_weights": spec.dummy,
                  "mode": mode, "width": width, "n": n, "beam_width": beam,
                  "num_requests": len(reqs), "seed": args.seed,
                  "paper_saved": PAPER.get(mode)}
        if torch.cuda.is_available() or args.record:
            record = append_result("sharing", params, metrics)
        else:
            record = make_record("sharing", params, metrics)
        rows.append({"mode": mode, "width": width, "record": record, "metrics": metrics})
        print(f"{mode} width {width}: " + ", ".join(f"{k}={metrics.get(k)}" for k in REPORTED),
              flush=True)
    print(render_table(rows))
    missing = sorted({k for r in rows for k in r["metrics"].get("missing_stats", [])})
    if missing:
        print(f"note: the engine's LLM.stats() lacks {', '.join(missing)}; "
              "the metrics built on them read n/a")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump([r["record"] for r in rows], f, indent=2)
    return rows


if __name__ == "__main__":
    main()
