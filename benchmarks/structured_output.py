"""Structured outputs: grammar compile time (cold and cache hit) for the test schemas, and, on
a GPU, constrained vs unconstrained output tok/s at one batch.

    python -m benchmarks.structured_output [--batch 64] [--max-tokens 128] [--decode]

Compile times are measured on whatever machine runs this (xgrammar compiles on the CPU).
`--decode` adds the throughput comparison (meant for a GPU: the target is constrained >= 0.90x
unconstrained at batch 64), the unconstrained rows held to their constrained twins' lengths. Records to benchmarks/results/structured_output.jsonl.
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
    """Constrained vs unconstrained output tok/s at one batch, like for like.

    A grammar ends its sequence when the JSON is complete, so constrained rows stop at
    different lengths and the batch thins out; an unconstrained batch that always ran
    `max_tokens` would be compared at a different occupancy. So each repeat runs the
    constrained batch first and then the unconstrained one with every row's `max_tokens` set
    to the length its constrained twin produced (EOS ignored): the same tokens per row, the
    same batch shape step by step, and the ratio is the grammar's cost per token."""
    from engine import LLM, SamplingParams
    from engine.structured_output import StructuredOutputsParams
    from tests.engine.structured_output.schemas import SCHEMAS

    llm = LLM(model=model, load_format=load_format) if model else LLM()
    prompts = [f"Write JSON matching this schema: {json.dumps(SCHEMAS[i % len(SCHEMAS)])}\n"
               for i in range(batch)]

    def params(lengths: Optional[list[int]]) -> list:
        return [SamplingParams(temperature=1.0, seed=i, ignore_eos=True,
                               max_tokens=max_tokens if lengths is None else lengths[i],
                               structured_outputs=None if lengths is not None else
                               StructuredOutputsParams(json=SCHEMAS[i % len(SCHEMAS)]))
                for i in range(batch)]

    def timed(ps: list) -> tuple[float, list[int]]:
        t = time.perf_counter()
        res = llm.generate(prompts, ps, use_tqdm=False)
        dt = time.perf_counter() - t
        lengths = [max(1, len(r.outputs[0].token_ids)) for r in res]
        return sum(lengths) / dt, lengths

    _, lengths = timed(params(None))  # warm-up at the full batch (kernels, graphs, grammars)
    timed(params(lengths))
    best: dict[str, float] = {}
    for _ in range(repeats):  # alternated, best of `repeats` each
        tok_s, lengths = timed(params(None))
        best["constrained_tok_s"] = max(best.get("constrained_tok_s", 0.0), tok_s)
        tok_s, _ = timed(params(lengths))
        best["unconstrained_tok_s"] = max(best.get("unconstrained_tok_s", 0.0), tok_s)
    best["mean_output_tokens"] = sum(lengths) / len(lengths)
    best["max_output_tokens"] = float(max(lengths))
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
