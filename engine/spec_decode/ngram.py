"""Prompt-lookup (n-gram) proposer: copy what followed an earlier occurrence of the suffix.

For n from `prompt_lookup_max` down to `prompt_lookup_min`, the sequence's last n tokens are
looked up in its earlier tokens (prompt and output); at the most recent earlier match, the
tokens that followed it are proposed. Costs no model, so it pays off whenever outputs copy
spans of their input (summaries, edits, code, repetition).
"""
from __future__ import annotations

from engine.sequence import Sequence
from engine.spec_decode.proposer import Proposer


def ngram_lookup(tokens: list[int], n_min: int, n_max: int, k: int) -> list[int]:
    """At most k tokens following the most recent earlier occurrence of the longest suffix
    (n_max..n_min tokens long) of `tokens`; [] when none occurs."""
    length = len(tokens)
    for n in range(min(n_max, length - 1), n_min - 1, -1):
        suffix = tokens[length - n:]
        first = suffix[0]
        # Start positions i < length - n (the suffix itself excluded), most recent first.
        i = length - n - 1
        while i >= 0:
            if tokens[i] == first and tokens[i:i + n] == suffix:
                return tokens[i + n:i + n + k]
            i -= 1
    return []


class NgramProposer(Proposer):
    def __init__(self, n_min: int, n_max: int):
        self.n_min = n_min
        self.n_max = n_max

    def propose(self, seqs: list[Sequence], max_tokens: list[int]) -> list[list[int]]:
        return [ngram_lookup(s.token_ids, self.n_min, self.n_max, k) if k > 0 else []
                for s, k in zip(seqs, max_tokens)]
