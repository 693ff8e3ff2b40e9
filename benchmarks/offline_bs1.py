"""Offline batch-1 figures the serving comparison is judged against: prefill of a 128-token prompt
plus its first token (`ttft_bs1`), and the per-token decode time at batch 1.

Uses `benchmarks/decode_latency.py` (the vLLM peer's gen_latency.py method) so both engines are
timed the same way: t(1 token) is the prefill + first token; the per-token time is
(t(256 tokens) - t(1 token)) / 255, medians over runs, fresh random prompts each run.

    python benchmarks/offline_bs1.py --model-shape llama3-8b --output-json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def main() -> None:
    from benchmarks.model_shapes import add_model_args, resolve_model
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--max-cuda-graph-tokens", type=int, default=None)
    ap.add_argument("--output-json", default=None)
    args = ap.parse_args()
    from benchmarks.decode_latency import measure
    from engine import LLM, SamplingParams
    spec = resolve_model(args.model, args.model_shape)
    kw = dict(spec.engine_kwargs)
    if args.max_cuda_graph_tokens is not None:
        kw["max_cuda_graph_tokens"] = args.max_cuda_graph_tokens
    llm = LLM(model=spec.model, seed=0, **kw)

    def sp(n: int) -> SamplingParams:
        return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, detokenize=False)

    rows = measure(llm, sp, batches=(1,))
    b1 = rows["batches"]["1"]
    res = {"ttft_bs1_ms": b1["t1_s"] * 1e3, "ttft_bs1_all_ms": [t * 1e3 for t in b1["t1_all_s"]],
           "decode_bs1_ms": b1["per_token_ms"], "method": rows["method"], "model": spec.label,
           "engine_kwargs": {k: v for k, v in kw.items() if k != "load_format"}}
    print(json.dumps(res))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
