"""Host time of n-gram drafting per engine step: the proposer's packed search against walking
the tokens in Python (the lookup's definition, and the implementation before 2026-12-04).

    python benchmarks/ngram_lookup.py [--batch 64] [--context 500 2000 8000] [--steps 20]

Random tokens (few matches: the search covers the whole context, the worst case), k = 4,
prompt_lookup 1..4; every step appends one token per sequence, as decoding does. CPU only;
records to benchmarks/results/ngram_lookup.jsonl. Never a pass/fail test.
"""
from __future__ import annotations

import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.host_before_after import run  # noqa: E402
from engine.sampling_params import SamplingParams  # noqa: E402
from engine.sequence import Request  # noqa: E402
from engine.spec_decode.ngram import NgramProposer  # noqa: E402


def walk(tokens: list[int], n_min: int, n_max: int, k: int) -> list[int]:
    for n in range(min(n_max, len(tokens) - 1), n_min - 1, -1):
        suffix = tokens[len(tokens) - n:]
        for i in range(len(tokens) - n - 1, -1, -1):
            if tokens[i] == suffix[0] and tokens[i:i + n] == suffix:
                return tokens[i + n:i + n + k]
    return []


def ms_per_step(batch: int, context: int, steps: int, packed: bool) -> float:
    rng = random.Random(0)
    seqs = [Request(f"r{i}", [rng.randrange(50000) for _ in range(context)], SamplingParams(),
                    [i], None).seqs[0] for i in range(batch)]
    proposer = NgramProposer(1, 4)
    proposer.propose(seqs, [4] * batch)  # the first step packs the prompts
    start = time.perf_counter()
    for _ in range(steps):
        for s in seqs:
            s.token_ids.append(rng.randrange(50000))
        if packed:
            proposer.propose(seqs, [4] * batch)
        else:
            [walk(s.token_ids, 1, 4, 4) for s in seqs]
    return 1e3 * (time.perf_counter() - start) / steps


def main() -> None:
    run(__doc__, "ngram_lookup", 64, [500, 2000, 8000], ("packed", "walk"), ms_per_step, {"k": 4, "prompt_lookup": [1, 4]})


if __name__ == "__main__":
    main()
