"""Turns a `SchedulerOutput` into the flat tensors one forward pass needs."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.attention.metadata import AttentionMetadata
from engine.scheduler_output import SchedulerOutput
from engine.sequence import PLACEHOLDER
from engine.transfer import to_device

# Chunks of at most this many new tokens attend as single-row sequences (build_model_inputs):
# a verify chunk of up to 7 draft tokens, a short prompt. Each row re-reads its context, so
# longer chunks go to the prefill kernel, which reads it once per query tile.
SHORT_QUERY_MAX = 8


@dataclass
class ModelInputs:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    meta: AttentionMetadata
    # Row (into the T token rows) whose logits each entry of `sample_rows` samples from.
    sample_rows: list[int]
    # For prompt_logprobs: (scheduled index, first row, number of rows) of chunks that want them.
    prompt_logprob_spans: list[tuple[int, int, int]]
    # (row, seq_id) of PLACEHOLDER tokens: filled on the device from the in-flight step's samples.
    placeholder_rows: list[tuple[int, int]] = field(default_factory=list)
    # (scheduled index, first row, number of rows) of verify chunks: a sequence holding d draft
    # tokens samples from all of its last d + 1 rows (see engine/spec_decode).
    verify_spans: list[tuple[int, int, int]] = field(default_factory=list)
    # First row of each scheduled sequence, in `out.scheduled`'s order (its rows are the next
    # `num_tokens`); forward observers use it to find a sequence's rows.
    first_rows: list[int] = field(default_factory=list)


def build_model_inputs(out: SchedulerOutput, block_size: int, device: torch.device,
                       pad_block_tables_to: int = 0,
                       short_query_max: int = SHORT_QUERY_MAX) -> ModelInputs:
    """Pack the scheduled sequences' new tokens, positions and cache slots.

    Invariant: attention sequence i's rows are `query_start_loc[i]:query_start_loc[i+1]`; row r
    holds token position `pos[r]`, written to slot `block_table[pos // bs] * bs + pos % bs`.
    Single-token (decode) sequences are packed first, then sequences of at most
    `short_query_max` new tokens (a speculative verify chunk, a short prompt) split into one
    single-row attention sequence per token (same block table, context up to that token: exactly
    the causal attention of the chunk), then the rest. So a backend runs every short query
    through its decode kernel and CUDA graphs replay verify steps as decode steps; only longer
    chunks reach the prefill kernel. `sample_rows` follows `out.scheduled`'s order; the
    `first_rows` / spans address rows, whatever the attention sequences.
    """
    scheduled = out.scheduled
    bs = block_size
    decodes: list[int] = []
    shorts: list[int] = []
    others: list[int] = []
    for i, s in enumerate(scheduled):
        n = s.num_tokens
        (decodes if n == 1 else shorts if n <= short_query_max else others).append(i)
    ids: list[int] = []
    pos: list[int] = []
    slots: list[int] = []
    tables: list[list[int]] = []
    spans: list[tuple[int, int, int]] = []
    placeholders: list[tuple[int, int]] = []
    last_row = [0] * len(scheduled)

    # Decodes: row r = one token at position `num_computed_tokens`.
    ids_append, pos_append, slots_append = ids.append, pos.append, slots.append
    tables_append = tables.append
    for row, i in enumerate(decodes):
        s = scheduled[i]
        seq = s.seq
        p = seq.num_computed_tokens
        tok = seq.token_ids[p]
        if tok == PLACEHOLDER and seq.num_pending and p >= len(seq.token_ids) - seq.num_pending:
            placeholders.append((row, seq.seq_id))
            tok = 0
        ids_append(tok)
        pos_append(p)
        table = seq.block_table
        slots_append(table[p // bs] * bs + p % bs)
        tables_append(table)
        last_row[i] = row
        if s.request.params.prompt_logprobs is not None and s.wants_prompt_logprobs:
            spans.append((i, row, 1))
    qsl = list(range(len(decodes) + 1))
    seq_lens = [p + 1 for p in pos]
    q_lens = [1] * len(decodes)

    # Short chunks (one attention sequence per token), then prefill chunks: slots one block run
    # at a time.
    num_short = len(shorts)
    for k, i in enumerate(itertools.chain(shorts, others)):
        s = scheduled[i]
        seq, n = s.seq, s.num_tokens
        start = seq.num_computed_tokens
        end = start + n
        base = len(ids)
        chunk = seq.token_ids[start:end]
        if seq.num_pending and end > len(seq.token_ids) - seq.num_pending:
            placeholders.extend((base + j, seq.seq_id) for j, t in enumerate(chunk)
                                if t == PLACEHOLDER)
            chunk = [0 if t == PLACEHOLDER else t for t in chunk]
        ids.extend(chunk)
        pos.extend(range(start, end))
        table = seq.block_table
        for b in range(start // bs, (end - 1) // bs + 1):
            first = b * bs
            slot0 = table[b] * bs - first  # slot of position q in this block: slot0 + q
            slots.extend(range(slot0 + max(start, first), slot0 + min(end, first + bs)))
        if s.wants_prompt_logprobs:
            spans.append((i, base, n))
        if k < num_short:
            qsl.extend(range(base + 1, base + n + 1))
            seq_lens.extend(range(start + 1, end + 1))
            q_lens.extend([1] * n)
            tables.extend([table] * n)
        else:
            qsl.append(base + n)
            seq_lens.append(end)
            q_lens.append(n)
            tables.append(table)
        last_row[i] = base + n - 1

    sample_rows: list[int] = []
    verify: list[tuple[int, int, int]] = []
    for i, s in enumerate(scheduled):
        k = len(s.sample_seqs)
        if k == 1:
            d = s.seq.num_draft
            if d:
                verify.append((i, last_row[i] - d, d + 1))
                continue
            sample_rows.append(last_row[i])
        elif k:
            sample_rows.extend([last_row[i]] * k)
    meta = AttentionMetadata(
        num_seqs=len(tables),
        num_tokens=len(ids),
        slot_mapping=to_device(slots, torch.int64, device),
        query_start_loc=to_device(qsl, torch.int32, device),
        seq_lens=to_device(seq_lens, torch.int32, device),
        block_tables=to_device(_pack_block_tables(tables, pad_block_tables_to), torch.int32,
                               device),
        max_query_len=max(q_lens) if q_lens else 0,
        max_seq_len=max(seq_lens) if seq_lens else 0,
        query_lens_cpu=q_lens,
        seq_lens_cpu=seq_lens,
    )
    return ModelInputs(
        input_ids=to_device(ids, torch.int64, device),
        positions=to_device(pos, torch.int64, device),
        meta=meta,
        sample_rows=sample_rows,
        prompt_logprob_spans=spans,
        placeholder_rows=placeholders,
        verify_spans=verify,
        first_rows=[last_row[i] - s.num_tokens + 1 for i, s in enumerate(scheduled)],
    )


def _pack_block_tables(tables: list[list[int]], pad_to: int) -> torch.Tensor:
    """[len(tables), width] int32, row i = tables[i] then zeros; width >= pad_to and >= 1."""
    lens = np.fromiter(map(len, tables), dtype=np.int64, count=len(tables))
    width = max(int(lens.max()) if len(tables) else 0, pad_to, 1)
    bt = np.zeros((len(tables), width), dtype=np.int32)
    total = int(lens.sum())
    if total:
        flat = np.fromiter(itertools.chain.from_iterable(tables), dtype=np.int32, count=total)
        bt[np.arange(width) < lens[:, None]] = flat  # row-major: each row's prefix, in order
    return torch.from_numpy(bt)


def dummy_prefill_inputs(num_tokens: int, block_size: int, device: torch.device) -> ModelInputs:
    """One sequence prefilling `num_tokens` tokens into blocks 0.. (memory profiling)."""
    nblocks = -(-num_tokens // block_size)
    meta = AttentionMetadata(
        num_seqs=1,
        num_tokens=num_tokens,
        slot_mapping=torch.arange(num_tokens, dtype=torch.int64, device=device),
        query_start_loc=torch.tensor([0, num_tokens], dtype=torch.int32, device=device),
        seq_lens=torch.tensor([num_tokens], dtype=torch.int32, device=device),
        block_tables=torch.arange(nblocks, dtype=torch.int32, device=device)[None],
        max_query_len=num_tokens,
        max_seq_len=num_tokens,
        query_lens_cpu=[num_tokens],
        seq_lens_cpu=[num_tokens],
    )
    return ModelInputs(
        input_ids=torch.zeros(num_tokens, dtype=torch.int64, device=device),
        positions=torch.arange(num_tokens, dtype=torch.int64, device=device),
        meta=meta, sample_rows=[], prompt_logprob_spans=[],
    )
