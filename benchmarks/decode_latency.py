"""Per-token decode time by generate difference, the method of the vLLM peer's gen_latency.py
(so pagedserve and vLLM figures compare), kept in the repository so benchmarks need nothing
beside the checkout.

For a batch of b requests with fresh random prompts of `inp` token ids (below `max_id`: no
special tokens, no prefix-cache hits), time one `generate` producing `out` tokens per request
and one producing 1; per-token = (t_out - t_1) / (out - 1), with the medians of `reps_long` and
`reps_short` runs after an untimed warm-up per batch size.
"""
from __future__ import annotations

import random
import statistics
import time
from typing import Any, Callable


def _generate_s(llm: Any, make_sp: Callable[[int], Any], b: int, inp: int, out: int,
                seed: int, max_id: int) -> float:
    rng = random.Random(seed)
    prompts = [{"prompt_token_ids": [rng.randrange(1, max_id) for _ in range(inp)]}
               for _ in range(b)]
    start = time.perf_counter()
    results = llm.generate(prompts, [make_sp(out) for _ in range(b)], use_tqdm=False)
    elapsed = time.perf_counter() - start
    produced = [len(r.outputs[0].token_ids) for r in results]
    if produced != [out] * b:
        raise RuntimeError(f"expected {out} tokens for each of {b} requests, got {produced[:4]}")
    return elapsed


def measure(llm: Any, make_sp: Callable[[int], Any], batches=(1, 32, 128), inp: int = 128,
            out: int = 256, reps_long: int = 3, reps_short: int = 5, seed0: int = 1000,
            max_id: int = 128000) -> dict:
    """{"method": ..., "batches": {str(b): {per_token_ms, t1_s, t<out>_s, spreads, ...}}}."""
    seeds = iter(range(seed0 + 1, seed0 + 1 + len(batches) * (1 + reps_long + reps_short)))
    table: dict[str, dict] = {}
    for b in batches:
        def run(n: int) -> float:
            return _generate_s(llm, make_sp, b, inp, n, next(seeds), max_id)
        run(out)  # warm-up
        short = [run(1) for _ in range(reps_short)]
        long = [run(out) for _ in range(reps_long)]
        t1, tn = statistics.median(short), statistics.median(long)
        per_token = (tn - t1) / (out - 1)
        table[str(b)] = {
            "t1_s": t1, f"t{out}_s": tn, "t1_all_s": short, f"t{out}_all_s": long,
            "per_token_ms": per_token * 1e3,
            "per_token_ms_min_spread": (min(long) - max(short)) / (out - 1) * 1e3,
            "per_token_ms_max_spread": (max(long) - min(short)) / (out - 1) * 1e3,
            "decode_tok_s": b / per_token,
        }
        print(f"  batch {b:4d}: t1 {t1 * 1e3:8.1f} ms  t{out} {tn * 1e3:8.1f} ms  "
              f"per-token {per_token * 1e3:.3f} ms", flush=True)
    return {"method": f"(t(out={out}) - t(out=1)) / {out - 1}; input {inp}; medians of "
                      f"{reps_long}/{reps_short} runs; fresh random prompts each run",
            "batches": table}
