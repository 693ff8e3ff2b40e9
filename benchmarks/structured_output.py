"""Structured outputs: grammar compile time (cold and cache hit) for the test schemas, and, on
a GPU, constrained vs unconstrained output tok/s at one batch.

    python -m benchmarks.structured_output [--batch 64] [--max-tokens 128] [--decode]

Compile times are measured on whatever machine runs this (xgrammar compiles on the CPU).
`--decode` adds the throughput comparison (meant for a GPU: the target is constrained >= 0.90x
unconstrained at batch 64). Records to benchmarks/results/structured_output.jsonl.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Optional


def compile_times(model: Optional[str] = None) -> dict[str, float]:
    from engine.loader.default_model import default_model_path
    from engine.loader.tokenizer import get_tokenizer
    from engine.structured_output import StructuredOutputsParams
    from engine.structured_output.backend import GrammarBackend
    from tests.engine.structured_output.schemas import SCHEMAS

    tok = get_tokenizer(model or default_model_path())
    backend = GrammarBackend(tok, len(tok), [tok.eos_token_id])
    cold, hit = [], []
    for schema in SCHEMAS:
        spec = StructuredOutputsParams(json=schema)
        t = time.perf_counter()
        backend.compile(spec)
        cold.append(time.perf_counter() - t)
        t = time.perf_counter()
        backend.compile(spec)
        hit.append(time.perf_counter() - t)
    ms = lambda xs, q: 1e3 * statistics.quantiles(xs, n=100)[q - 1]  # noqa: E731
    return {"compile_p50_ms": ms(cold, 50), "compile_p90_ms": ms(cold, 90),
            "compile_max_ms": 1e3 * max(cold), "cache_hit_p50_ms": ms(hit, 50),
            "cache_hit_max_ms": 1e3 * max(hit)}


def decode_tok_s(batch: int, max_tokens: int, model: Optional[str] = None,
                 load_format: str = "auto", repeats: int = 2) -> dict[str, float]:
    from engine import LLM, SamplingParams
    from engine.structured_output import StructuredOutputsParams
    from tests.engine.structured_output.schemas import SCHEMAS

    llm = LLM(model=model, load_format=load_format) if model else LLM()
    prompts = [f"Write JSON matching this schema: {json.dumps(SCHEMAS[i % len(SCHEMAS)])}\n"
               for i in range(batch)]
    params = {name: [SamplingParams(temperature=1.0, seed=i, max_tokens=max_tokens,
                                    ignore_eos=True, structured_outputs=StructuredOutputsParams(
                                        json=SCHEMAS[i % len(SCHEMAS)]) if constrained else None)
                     for i in range(batch)]
              for name, constrained in (("unconstrained", False), ("constrained", True))}
    for name in params:  # warm up at the full batch (kernels, graphs, grammar compiles)
        llm.generate(prompts, params[name], use_tqdm=False)
    best: dict[str, float] = {}
    for _ in range(repeats):  # alternated, best of `repeats` each
        for name in params:
            t = time.perf_counter()
            res = llm.generate(prompts, params[name], use_tqdm=False)
            dt = time.perf_counter() - t
            tok_s = sum(len(r.outputs[0].token_ids) for r in res) / dt
            best[f"{name}_tok_s"] = max(best.get(f"{name}_tok_s", 0.0), tok_s)
    best["ratio"] = best["constrained_tok_s"] / best["unconstrained_tok_s"]
    return best


def main() -> None:
    from benchmarks.record import append_result
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--decode", action="store_true")
    ap.add_argument("--model", default=None, help="decode with this model (default: the default "
                    "model); an HF folder with the default model's config and tokenizer and "
                    "--load-format dummy measures the same shapes without its weights")
    ap.add_argument("--load-format", default="auto")
    args = ap.parse_args()
    metrics = compile_times(args.model)
    if args.decode:
        metrics.update(decode_tok_s(args.batch, args.max_tokens, args.model, args.load_format))
    print(json.dumps(metrics, indent=2))
    append_result("structured_output", {"num_schemas": 50, "batch": args.batch,
                                        "max_tokens": args.max_tokens, "decode": args.decode,
                                        "model": args.model or "default",
                                        "load_format": args.load_format}, metrics)


if __name__ == "__main__":
    main()
