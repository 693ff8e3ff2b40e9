"""Prompt-lookup (n-gram) proposer: copy what followed an earlier occurrence of the suffix.

For n from `prompt_lookup_max` down to `prompt_lookup_min`, the sequence's last n tokens are
looked up in its earlier tokens (prompt and output); at the most recent earlier match, the
tokens that followed it are proposed. Costs no model, so it pays off whenever outputs copy
spans of their input (summaries, edits, code, repetition).

The lookup runs every step for every speculating sequence, so it must not walk the context in
Python (a 2,000-token context without a match took ~0.5 ms per sequence that way, tens of
milliseconds per step at batch 64): the tokens are kept as packed 32-bit integers, extended as
the sequence grows, and searched with `bytearray.rfind` (C), keeping only matches that start on
a token boundary.
"""
from __future__ import annotations

import sys
from array import array

from engine.sequence import Sequence
from engine.spec_decode.proposer import Proposer

_ITEM = array("i").itemsize


def _packed(tokens: list[int]) -> bytearray:
    return bytearray(array("i", tokens).tobytes())


def packed_lookup(buf: bytearray, tokens: list[int], n_min: int, n_max: int,
                  k: int) -> list[int]:
    """`ngram_lookup` over `buf`, the packed `tokens`."""
    length = len(tokens)
    end = _ITEM * (length - 1)  # a match must end before the last token (the suffix itself)
    for n in range(min(n_max, length - 1), n_min - 1, -1):
        suffix = bytes(buf[_ITEM * (length - n):_ITEM * length])
        stop = end
        while True:
            pos = buf.rfind(suffix, 0, stop)
            if pos < 0:
                break
            if pos % _ITEM == 0:
                i = pos // _ITEM
                return tokens[i + n:i + n + k]
            stop = pos + len(suffix) - 1  # an unaligned hit: look further left
    return []


def ngram_lookup(tokens: list[int], n_min: int, n_max: int, k: int) -> list[int]:
    """At most k tokens following the most recent earlier occurrence of the longest suffix
    (n_max..n_min tokens long) of `tokens`; [] when none occurs."""
    return packed_lookup(_packed(tokens), tokens, n_min, n_max, k)


class NgramProposer(Proposer):
    def __init__(self, n_min: int, n_max: int):
        self.n_min = n_min
        self.n_max = n_max
        self._packed: dict[int, bytearray] = {}  # seq_id -> its tokens so far, packed

    def _buffer(self, seq: Sequence) -> bytearray:
        """The sequence's packed tokens, extended by what it gained since the last step
        (rebuilt if its tokens were cut back since)."""
        tokens = seq.token_ids
        buf = self._packed.get(seq.seq_id)
        have = 0 if buf is None else len(buf) // _ITEM
        if buf is None or have > len(tokens) or (
                have and int.from_bytes(buf[-_ITEM:], sys.byteorder, signed=True) != tokens[have - 1]):
            buf = self._packed[seq.seq_id] = _packed(tokens)
        elif have < len(tokens):
            buf += array("i", tokens[have:]).tobytes()
        return buf

    def propose(self, seqs: list[Sequence], max_tokens: list[int]) -> list[list[int]]:
        return [packed_lookup(self._buffer(s), s.token_ids, self.n_min, self.n_max, k)
                if k > 0 else [] for s, k in zip(seqs, max_tokens)]

    def release(self, live_seq_ids: set[int]) -> None:
        for sid in [s for s in self._packed if s not in live_seq_ids]:
            del self._packed[sid]
