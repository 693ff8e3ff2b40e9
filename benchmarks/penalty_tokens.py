"""Host time per step of the token tensors penalties read: the per-sequence int64 buffers of
engine/token_history.py against converting every history list each step (the way before
2026-12-04).

    python benchmarks/penalty_tokens.py [--batch 256] [--context 500 1000 4000] [--steps 20]

Every sequence has a repetition and a frequency penalty (so both the seen-token and the
output-token tensors are built), a prompt of `context` tokens and a growing output; every step
appends one token per sequence, as decoding does. CPU only; records to
benchmarks/results/penalty_tokens.jsonl. Never a pass/fail test.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.record import append_result  # noqa: E402
from engine.sampling_params import SamplingParams  # noqa: E402
from engine.sequence import Request  # noqa: E402
from engine.token_history import penalty_token_tensors  # noqa: E402

CPU = torch.device("cpu")


def lists_to_tensor(lists: list[list[int]], pad: int) -> torch.Tensor:
    width = max(1, max(len(x) for x in lists))
    out = torch.full((len(lists), width), pad, dtype=torch.long)
    for i, x in enumerate(lists):
        if x:
            out[i, :len(x)] = torch.tensor(x, dtype=torch.long)
    return out


def ms_per_step(batch: int, context: int, steps: int, buffered: bool) -> float:
    rng = random.Random(0)
    params = SamplingParams(repetition_penalty=1.1, frequency_penalty=0.2)
    rows = []
    for i in range(batch):
        req = Request(f"r{i}", [rng.randrange(50000) for _ in range(context)], params, [i], None)
        rows.append((req, req.seqs[0]))
    penalty_token_tensors(rows, 50000, CPU)  # the first step copies the prompts
    start = time.perf_counter()
    for _ in range(steps):
        for _, seq in rows:
            seq.append_token(rng.randrange(50000), 0.0)
        if buffered:
            penalty_token_tensors(rows, 50000, CPU)
        else:
            lists_to_tensor([s.token_ids for _, s in rows], 50000)
            lists_to_tensor([s.output_token_ids for _, s in rows], 50000)
    return 1e3 * (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--context", type=int, nargs="+", default=[500, 1000, 4000])
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    for context in a.context:
        buffered = ms_per_step(a.batch, context, a.steps, True)
        lists = ms_per_step(a.batch, context, max(2, a.steps // 4), False)
        print(f"batch {a.batch}, context {context}: buffers {buffered:.2f} ms/step, "
              f"lists {lists:.2f} ms/step ({lists / buffered:.1f}x)")
        append_result("penalty_tokens", {"batch": a.batch, "context": context},
                      {"buffered_ms_per_step": buffered, "lists_ms_per_step": lists,
                       "speedup": lists / buffered})


if __name__ == "__main__":
    main()
