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

import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.host_before_after import run  # noqa: E402
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
    run(__doc__, "penalty_tokens", 256, [500, 1000, 4000], ("buffered", "lists"), ms_per_step, {})


if __name__ == "__main__":
    main()
