"""Speculative decoding benchmark: tokens/s with speculation on vs off, and acceptance.

Cases (`--cases`, comma separated):
  replay_ngram_bs1    greedy once, then prompts made of prompt + its continuation + prompt, so
                      n-gram lookup can propose what the model said before (works with dummy
                      weights); batch 1.
  grounded_ngram_bs1  an input-grounded task (repeat/edit a passage given in the prompt); batch 1.
  ngram_bs<N>         the replay prompts at batch N (throughput must not collapse).
  draft_bs1           `--draft-model` drafting for the target on the replay prompts; batch 1.
Each case runs the same prompts with speculation off and on, greedy, `--max-tokens` tokens each
(EOS ignored), after a warm-up; greedy outputs must agree. Appends one record per case to
benchmarks/results/spec_decode.jsonl (bench "spec_decode", params.case, metrics.speedup_vs_off,
metrics.acceptance_rate). On the CPU this measures the mechanism, not the GPU targets.

    python benchmarks/spec_decode.py [--model PATH] [--load-format dummy] [--k 4]
        [--max-tokens 64] [--cases replay_ngram_bs1,grounded_ngram_bs1] [--device cpu]
        [--random-seed-prompts] [--vllm-json vllm_spec.json]

The engines (off, n-gram, draft) are resident together: on a GPU they share
`--gpu-memory-utilization` (default 0.9) equally. `--random-seed-prompts` seeds the
replay with fixed random token ids instead of tokenized text (no tokenizer needed; the same ids
that benchmarks/vllm_spec_side.py gives vLLM, which builds its replay from its own greedy output).
`--vllm-json` adds `metrics.vs_vllm` (our tokens/s with speculation ÷ vLLM's) to the cases vLLM ran.
`--dummy-init uniform-small` re-fills every engine's floating-point weights with the same
uniform(-1e-3, 1e-3) values, as vLLM's `load_format="dummy"` does: near-constant logits make greedy
continuations repeat, so the replay prompts measure speculation at high acceptance on both
engines (with the loader's N(0, 0.02) dummy weights nothing repeats and acceptance is ~0).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SEED_PROMPTS = ("Write a short story about a lighthouse keeper.",
                "Explain how a hash table works.",
                "Describe the water cycle in detail.",
                "List ten facts about the moon.")
PASSAGE = ("The committee met on Tuesday to review the budget. It approved funding for the new "
           "library, postponed the decision on the swimming pool, and asked the treasurer to "
           "prepare a revised estimate for road repairs before the next meeting in March.")
GROUNDED = (f"Here is a paragraph:\n\n{PASSAGE}\n\nRepeat the paragraph exactly, but replace "
            "'Tuesday' with 'Wednesday'.\n\n")


def random_seed_prompts(n: int = len(SEED_PROMPTS), length: int = 32) -> list[list[int]]:
    """Fixed pseudo-random prompt ids for the replay cases (shared with the vLLM side), drawn
    from ids 1000..31999: ordinary tokens in every vocabulary benchmarked here."""
    import random
    rng = random.Random(1234)
    return [[rng.randrange(1000, 32000) for _ in range(length)] for _ in range(n)]


def _engine(args, spec: Optional[dict], mem: Optional[float] = None):
    from engine import LLM
    kw: dict[str, Any] = dict(model=args.model, device=args.device, seed=0)
    if mem is not None:
        kw["gpu_memory_utilization"] = mem
    if args.load_format:
        kw["load_format"] = args.load_format
    if spec is not None:
        kw["speculative_config"] = spec
    return LLM(**kw)


def _uniform_small(model) -> None:
    """Every floating-point parameter uniform(-1e-3, 1e-3) from one seed (the same values in
    every engine), in place: captured CUDA graphs read the same tensors."""
    import torch

    # Drawn on the parameters' own device (on the host an 8B model took ~40 s per engine).
    gens: dict = {}
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                gen = gens.get(p.device)
                if gen is None:
                    gen = gens[p.device] = torch.Generator(device=p.device).manual_seed(0)
                p.uniform_(-1e-3, 1e-3, generator=gen)


def _run(llm, prompts: list[list[int]], max_tokens: int) -> tuple[float, list, dict]:
    from engine import SamplingParams
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    items = [{"prompt_token_ids": p} for p in prompts]
    llm.generate(items[:1], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)
    before = llm.stats()
    t0 = time.perf_counter()
    outs = llm.generate(items, params, use_tqdm=False)
    elapsed = time.perf_counter() - t0
    return elapsed, [o.outputs[0].token_ids for o in outs], stats_delta(before, llm.stats())


def stats_delta(before: dict, after: dict) -> dict:
    """The speculation counters and step count of `LLM.stats()` gained between two reads."""
    return {k: after[k] - before.get(k, 0) for k in after
            if isinstance(after[k], (int, float)) and k.startswith(("spec_decode_num", "num_steps"))}


def main(argv: Optional[list[str]] = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct")
    ap.add_argument("--load-format", default=None)
    ap.add_argument("--draft-model", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--cases", default="replay_ngram_bs1,grounded_ngram_bs1")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                    help="in all, split between the resident engines")
    ap.add_argument("--random-seed-prompts", action="store_true")
    ap.add_argument("--dummy-init", choices=["loader", "uniform-small"], default="loader",
                    help="uniform-small: vLLM's dummy weights (see the module docstring)")
    ap.add_argument("--vllm-json", default=None)
    ap.add_argument("--disable-by-batch-size", type=int, default=None,
                    help="speculative_config.disable_by_batch_size for the n-gram engine")
    args = ap.parse_args(argv)
    import json

    import torch

    from benchmarks.record import append_result
    # gpu_memory_utilization bounds the device's whole use, the engines already resident
    # included: the i-th of n engines gets i/n of the total.
    shares = [None] * 3
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        n = 3 if args.draft_model else 2
        shares = [args.gpu_memory_utilization * (i + 1) / n for i in range(3)]
    off = _engine(args, None, shares[0])
    ngram = {"method": "ngram", "num_speculative_tokens": args.k, "prompt_lookup_min": 2,
             "prompt_lookup_max": 5, "disable_by_batch_size": args.disable_by_batch_size}
    on = _engine(args, ngram, shares[1])
    draft = (_engine(args, {"method": "draft_model", "model": args.draft_model,
                            "num_speculative_tokens": args.k}, shares[2])
             if args.draft_model else None)
    vllm = json.load(open(args.vllm_json)).get("cases", {}) if args.vllm_json else {}
    if args.dummy_init == "uniform-small":
        for llm in (off, on, draft):
            if llm is not None:
                _uniform_small(llm.llm_engine.core.runner.model)

    # Replay prompts: prompt + the model's own greedy continuation + prompt again.
    if args.random_seed_prompts:
        seeds = random_seed_prompts()
        tok = None
    else:
        tok = off.get_tokenizer()
        seeds = [tok.encode(p) for p in SEED_PROMPTS]
    _, conts, _ = _run(off, seeds, args.max_tokens)
    replay = [s + c + s for s, c in zip(seeds, conts)]
    records = []
    for case in [c for c in args.cases.split(",") if c]:
        if case == "grounded_ngram_bs1":
            if tok is None:
                raise SystemExit("grounded_ngram_bs1 needs a tokenizer (no --random-seed-prompts)")
            prompts, engine_on = [tok.encode(GROUNDED)], on
        elif case.startswith("ngram_bs"):
            bs = int(case.removeprefix("ngram_bs"))
            prompts, engine_on = [replay[i % len(replay)] for i in range(bs)], on
        elif case == "replay_ngram_bs1":
            prompts, engine_on = replay[:1], on
        elif case == "draft_bs1":
            if draft is None:
                raise SystemExit("draft_bs1 needs --draft-model")
            prompts, engine_on = replay[:1], draft
        else:
            raise SystemExit(f"unknown case {case!r}")
        t_off, out_off, s_off = _run(off, prompts, args.max_tokens)
        t_on, out_on, s_on = _run(engine_on, prompts, args.max_tokens)
        n_tok = sum(len(o) for o in out_on)
        drafted = s_on.get("spec_decode_num_draft_tokens", 0)
        metrics = {
            "tok_s_off": n_tok / t_off, "tok_s_on": n_tok / t_on,
            "speedup_vs_off": t_off / t_on,
            "acceptance_rate": (s_on.get("spec_decode_num_accepted_tokens", 0) / drafted
                                if drafted else 0.0),
            "steps_off": s_off.get("num_steps", 0), "steps_on": s_on.get("num_steps", 0),
            "step_ms_off": 1e3 * t_off / max(1, s_off.get("num_steps", 1)),
            "step_ms_on": 1e3 * t_on / max(1, s_on.get("num_steps", 1)),
            "greedy_match": float(out_on == out_off),
        }
        if case in vllm and vllm[case].get("tok_s_on"):
            metrics["vllm_tok_s_on"] = vllm[case]["tok_s_on"]
            metrics["vllm_acceptance_rate"] = vllm[case].get("acceptance_rate")
            metrics["vs_vllm"] = metrics["tok_s_on"] / vllm[case]["tok_s_on"]
        params = {"case": case, "model": args.model or "SmolLM2-135M-Instruct (default)",
                  "load_format": args.load_format or "auto", "dummy_init": args.dummy_init,
                  "k": args.k,
                  "max_tokens": args.max_tokens, "batch": len(prompts),
                  "method": "draft_model" if engine_on is draft else "ngram",
                  "disable_by_batch_size": args.disable_by_batch_size}
        print(case, {k: round(v, 3) if isinstance(v, float) else v for k, v in metrics.items()})
        if not args.no_record:
            records.append(append_result("spec_decode", params, metrics))
    return records


if __name__ == "__main__":
    main()
