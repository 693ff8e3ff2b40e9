"""CPU benchmark: tokens/s of `LLM.generate` on the default model against HF transformers.

Both sides get the same prompts (the engine's tokenization of a few instructions), greedy decoding
and exactly `--max-tokens` new tokens each (EOS ignored), on the same machine, in fp32. HF runs
them as one left-padded batch (`generate` with static batching) and one prompt at a time; the
sequential run also checks that greedy tokens agree with the engine's.

    python benchmarks/cpu_generate.py [--num-prompts 8] [--max-tokens 64] [--output-json f.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

PROMPTS = (
    "Give three tips for staying healthy.",
    "What is the capital of France? Answer in one sentence.",
    "Write a short poem about the sea.",
    "Explain what a hash table is to a ten-year-old.",
    "List the planets of the solar system in order from the sun.",
    "Translate 'good morning, how are you?' into Spanish.",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "Why is the sky blue?",
    "Suggest a name for a bakery that sells only croissants.",
    "How do I reverse a list in Python?",
    "What are the main causes of inflation?",
    "Describe the water cycle.",
)


def run_engine(prompts: Sequence[str], max_tokens: int, threads: Optional[int]) -> dict[str, Any]:
    """Engine side: one warm-up call, then one timed generate over every prompt."""
    from engine import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(device="cpu")
    load_s = time.perf_counter() - t0
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    llm.generate(list(prompts[:1]), SamplingParams(temperature=0.0, max_tokens=2), use_tqdm=False)
    t0 = time.perf_counter()
    outs = llm.generate(list(prompts), params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"load_s": load_s, "elapsed_s": elapsed, "output_tokens": tokens,
            "output_tok_s": tokens / elapsed,
            "prompt_token_ids": [list(o.prompt_token_ids) for o in outs],
            "token_ids": [list(o.outputs[0].token_ids) for o in outs]}


def _hf_generate(model: Any, batch: Sequence[list[int]], max_tokens: int, pad_id: int,
                 ) -> list[list[int]]:
    width = max(len(p) for p in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(batch):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens,
                             do_sample=False, pad_token_id=pad_id, eos_token_id=None)
    return [row[width:].tolist() for row in out]


def run_hf(prompt_ids: Sequence[list[int]], max_tokens: int, modes: Sequence[str],
           ) -> dict[str, Any]:
    """HF side: the default GGUF dequantized to fp32; batched and/or sequential generate."""
    from transformers import AutoModelForCausalLM

    from benchmarks.model_shapes import DEFAULT_GGUF, default_model_folder

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(default_model_folder(), gguf_file=DEFAULT_GGUF,
                                                 dtype=torch.float32).eval()
    out: dict[str, Any] = {"load_s": time.perf_counter() - t0}
    pad_id = model.generation_config.pad_token_id
    if pad_id is None:
        pad_id = model.config.eos_token_id or 0
    _hf_generate(model, [prompt_ids[0]], 2, pad_id)  # warm-up
    for mode in modes:
        t0 = time.perf_counter()
        if mode == "batched":
            tokens = _hf_generate(model, prompt_ids, max_tokens, pad_id)
        else:
            tokens = [_hf_generate(model, [p], max_tokens, pad_id)[0] for p in prompt_ids]
        elapsed = time.perf_counter() - t0
        count = sum(len(t) for t in tokens)
        out[mode] = {"elapsed_s": elapsed, "output_tokens": count, "output_tok_s": count / elapsed,
                     "token_ids": tokens}
    return out


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--hf-modes", nargs="+", default=["batched", "sequential"],
                        choices=["batched", "sequential"])
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--output-json", default=None)
    parser.add_argument("--record", action="store_true",
                        help="append to benchmarks/results/cpu_generate.jsonl")
    args = parser.parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.num_prompts)]

    eng = run_engine(prompts, args.max_tokens, args.num_threads)
    hf = run_hf(eng["prompt_token_ids"], args.max_tokens, args.hf_modes)
    metrics: dict[str, Any] = {
        "engine_output_tok_s": eng["output_tok_s"], "engine_elapsed_s": eng["elapsed_s"],
        "engine_load_s": eng["load_s"], "hf_load_s": hf["load_s"],
        "output_tokens": eng["output_tokens"],
    }
    for mode in args.hf_modes:
        metrics[f"hf_{mode}_output_tok_s"] = hf[mode]["output_tok_s"]
        metrics[f"hf_{mode}_elapsed_s"] = hf[mode]["elapsed_s"]
        metrics[f"speedup_vs_hf_{mode}"] = eng["output_tok_s"] / hf[mode]["output_tok_s"]
        # Greedy agreement: identical token sequences (batched HF may drift through padding).
        metrics[f"greedy_match_{mode}"] = sum(
            a == b for a, b in zip(eng["token_ids"], hf[mode]["token_ids"])) / len(prompts)
    params = {"workload": "cpu_prompts", "model": "SmolLM2-135M-Instruct (default, GGUF Q4_1)",
              "num_prompts": args.num_prompts, "max_tokens": args.max_tokens, "dtype": "float32",
              "num_threads": args.num_threads or torch.get_num_threads()}
    from benchmarks.record import append_result, make_record

    record = (append_result if args.record else make_record)("cpu_generate", params, metrics)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(record, f, indent=2)
    print(f"engine {metrics['engine_output_tok_s']:.1f} tok/s; " + "; ".join(
        f"HF {m} {metrics[f'hf_{m}_output_tok_s']:.1f} tok/s "
        f"(speedup {metrics[f'speedup_vs_hf_{m}']:.2f}x, greedy match "
        f"{metrics[f'greedy_match_{m}']:.0%})" for m in args.hf_modes))
    return record


if __name__ == "__main__":
    main()
