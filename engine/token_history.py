"""The token ids penalties read, as padded tensors, without converting whole histories each step.

Repetition penalties read every token a sequence has seen (prompt and output), presence and
frequency penalties its output tokens. Turning those Python lists into tensors on every step
took 55 ms of host time per step at batch 256 with 1,000-token prompts, against 2.6 ms this
way (a 2-core CPU; `benchmarks/penalty_tokens.py`). Instead each `Sequence` keeps an int64
copy of its known tokens (`Sequence.token_array`), extended by what it gained since the last
step, and a step copies those buffers into one padded array. The n-gram proposer searches
the same buffers (engine/spec_decode/ngram.py).

Known tokens are the sequence's tokens less trailing placeholders (sampled by a step still in
flight) and drafts (not yet verified). They only grow; a sequence whose tokens were replaced
(a beam adopting its parent's) is rebuilt: its buffer would be longer than its known tokens, or
its last entry would differ.
"""
from __future__ import annotations

import sys
from array import array
from typing import Any, Optional

import numpy as np
import torch

from engine.transfer import to_device

ITEM = 8  # bytes per token id: native-endian int64


def pack(tokens: list[int]) -> bytearray:
    """Token ids as packed native int64 (a bytearray: numpy reads it, `rfind` searches it)."""
    return bytearray(array("q", tokens).tobytes())


def known_tokens(seq: Any) -> tuple[bytearray, int]:
    """(the known tokens packed by `pack`, their number). `Sequence`s keep their buffer between
    steps (`Sequence.token_array`, exactly the known tokens after this call); other views of a
    sequence (the verifier's) are packed whole."""
    tokens = seq.token_ids
    n = len(tokens) - getattr(seq, "num_pending", 0) - getattr(seq, "num_draft", 0)
    if not hasattr(seq, "token_array"):
        return pack(tokens[:n]), n
    buf = seq.token_array
    have = 0 if buf is None else len(buf) // ITEM
    stale = have > n or (have > 0 and _last(buf) != tokens[have - 1])
    if buf is None or stale:
        buf = seq.token_array = pack(tokens[:n])
    elif have < n:
        buf += array("q", tokens[have:n]).tobytes()
    return buf, n


def _last(buf: bytearray) -> int:
    return int.from_bytes(buf[-ITEM:], sys.byteorder, signed=True)


def padded_tokens(spans: list[Optional[tuple[Any, int, int]]], pad: int,
                  device: torch.device) -> torch.Tensor:
    """[len(spans), width] int64 on `device`: row i holds tokens [start, end) of span i's
    buffer (`None`: no tokens), padded with `pad`."""
    width = max([1] + [end - start for s in spans if s is not None for _, start, end in [s]])
    out = np.full((len(spans), width), pad, dtype=np.int64)
    for i, span in enumerate(spans):
        if span is None:
            continue
        buf, start, end = span
        if end > start:
            out[i, :end - start] = np.frombuffer(buf, dtype=np.int64, count=end - start,
                                                 offset=ITEM * start)
    return to_device(torch.from_numpy(out), torch.long, device)


def penalty_token_tensors(rows: list[tuple[Any, Any]], vocab_size: int, device: torch.device
                          ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(seen tokens for repetition penalties, output tokens for presence/frequency penalties),
    each [N, L] padded with `vocab_size`, or None when no row of the step needs it."""
    seen: list[Optional[tuple[Any, int, int]]] = []
    outs: list[Optional[tuple[Any, int, int]]] = []
    for req, seq in rows:
        p = req.params
        rep = p.repetition_penalty != 1.0
        freq = p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
        if rep or freq:
            buf, n = known_tokens(seq)
        seen.append((buf, 0, n) if rep else None)
        outs.append((buf, min(seq.prompt_len, n), n) if freq else None)
    return (padded_tokens(seen, vocab_size, device) if any(seen) else None,
            padded_tokens(outs, vocab_size, device) if any(outs) else None)
