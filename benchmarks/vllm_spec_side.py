"""vLLM side of benchmarks/spec_decode.py's replay cases (run under the vLLM bundle on the GPU):

    bash .carry/vllm/device.sh python3 benchmarks/vllm_spec_side.py --model-dir DIR \\
        --cases replay_ngram_bs1,ngram_bs256 --out $OUT/vllm_spec.json

One vLLM engine with n-gram speculation (k=4, lookup 2..5 as pagedserve's benchmark), dummy
weights, the same fixed random seed prompts (`spec_decode.random_seed_prompts`). Its replay
prompts are prompt + ITS OWN greedy continuation + prompt (greedy output is the same with
speculation on), then the same timing as pagedserve's `_run`: a 4-token warm-up, one generate
call timed. Writes {"cases": {case: {"tok_s_on", "acceptance_rate"}}} for `--vllm-json`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _accepted(llm) -> tuple[float, float]:
    """(draft tokens, accepted tokens) so far, from vLLM's metrics."""
    drafted = accepted = 0.0
    try:
        for m in llm.get_metrics():
            if m.name.endswith("spec_decode_num_draft_tokens"):
                drafted += getattr(m, "value", 0)
            elif m.name.endswith("spec_decode_num_accepted_tokens"):
                accepted += getattr(m, "value", 0)
    except Exception:  # noqa: BLE001  (metrics are optional)
        pass
    return drafted, accepted


def main() -> None:
    from benchmarks.spec_decode import random_seed_prompts
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True, help="folder with config.json")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--cases", default="replay_ngram_bs1")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import vllm
    from vllm import LLM, SamplingParams
    res: dict = {"engine": "vllm", "version": vllm.__version__, "cases": {}, "errors": []}
    t0 = time.perf_counter()
    llm = LLM(model=args.model_dir, load_format="dummy", skip_tokenizer_init=True,
              dtype="bfloat16", seed=0, gpu_memory_utilization=args.gpu_memory_utilization,
              disable_log_stats=False,
              speculative_config={"method": "ngram", "num_speculative_tokens": args.k,
                                  "prompt_lookup_min": 2, "prompt_lookup_max": 5})
    res["startup_s"] = time.perf_counter() - t0
    greedy = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True,
                            detokenize=False)
    seeds = random_seed_prompts()
    conts = [list(o.outputs[0].token_ids) for o in llm.generate(
        [{"prompt_token_ids": s} for s in seeds], greedy, use_tqdm=False)]
    replay = [s + c + s for s, c in zip(seeds, conts)]
    for case in [c for c in args.cases.split(",") if c]:
        try:
            bs = 1 if case == "replay_ngram_bs1" else int(case.removeprefix("ngram_bs"))
            items = [{"prompt_token_ids": replay[i % len(replay)]} for i in range(bs)]
            llm.generate(items[:1], SamplingParams(temperature=0.0, max_tokens=4,
                                                   detokenize=False), use_tqdm=False)
            d0, a0 = _accepted(llm)
            t = time.perf_counter()
            outs = llm.generate(items, greedy, use_tqdm=False)
            el = time.perf_counter() - t
            d1, a1 = _accepted(llm)
            n = sum(len(o.outputs[0].token_ids) for o in outs)
            res["cases"][case] = {"tok_s_on": n / el, "elapsed_s": el, "tokens": n,
                                  "acceptance_rate": (a1 - a0) / (d1 - d0) if d1 > d0 else None}
            print(case, res["cases"][case], flush=True)
        except Exception as e:  # noqa: BLE001
            res["errors"].append(f"{case}: {type(e).__name__}: {e}")
            traceback.print_exc()
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print("RESULT", json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
