"""Prompt-lookup (n-gram) proposer: copy what followed an earlier occurrence of the suffix.

For n from `prompt_lookup_max` down to `prompt_lookup_min`, the sequence's last n tokens are
looked up in its earlier tokens (prompt and output); at the most recent earlier match, the
tokens that followed it are proposed. Costs no model, so it pays off whenever outputs copy
spans of their input (summaries, edits, code, repetition).

The lookup runs every step for every speculating sequence, so it must not walk the context in
Python (a 2,000-token context without a match took ~0.5 ms per sequence that way, tens of
milliseconds per step at batch 64): it searches the sequence's packed token buffer, which
engine/token_history.py extends as the sequence grows, with `bytearray.rfind` (C), keeping only
matches that start on a token boundary.
"""
from __future__ import annotations

from engine.sequence import Sequence
from engine.spec_decode.proposer import Proposer
from engine.token_history import ITEM, known_tokens, pack


def packed_lookup(buf: bytearray, tokens: list[int], n_min: int, n_max: int,
                  k: int) -> list[int]:
    """`ngram_lookup` over `buf`, `tokens` packed by engine/token_history.py's `pack`."""
    length = len(tokens)
    end = ITEM * (length - 1)  # a match must end before the last token (the suffix itself)
    for n in range(min(n_max, length - 1), n_min - 1, -1):
        suffix = bytes(buf[ITEM * (length - n):ITEM * length])
        stop = end
        while True:
            pos = buf.rfind(suffix, 0, stop)
            if pos < 0:
                break
            if pos % ITEM == 0:
                i = pos // ITEM
                return tokens[i + n:i + n + k]
            stop = pos + len(suffix) - 1  # an unaligned hit: look further left
    return []


def ngram_lookup(tokens: list[int], n_min: int, n_max: int, k: int) -> list[int]:
    """At most k tokens following the most recent earlier occurrence of the longest suffix
    (n_max..n_min tokens long) of `tokens`; [] when none occurs."""
    return packed_lookup(pack(tokens), tokens, n_min, n_max, k)


class NgramProposer(Proposer):
    def __init__(self, n_min: int, n_max: int):
        self.n_min = n_min
        self.n_max = n_max

    def propose(self, seqs: list[Sequence], max_tokens: list[int]) -> list[list[int]]:
        """Proposing sequences hold no placeholder or draft: their known tokens are all."""
        return [packed_lookup(known_tokens(s)[0], s.token_ids, self.n_min, self.n_max, k)
                if k > 0 else [] for s, k in zip(seqs, max_tokens)]
