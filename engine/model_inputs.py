"""Turns a `SchedulerOutput` into the flat tensors one forward pass needs."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from engine.attention.metadata import AttentionMetadata
from engine.scheduler_output import SchedulerOutput
from engine.sequence import PLACEHOLDER
from engine.transfer import to_device


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


def build_model_inputs(out: SchedulerOutput, block_size: int, device: torch.device,
                       pad_block_tables_to: int = 0) -> ModelInputs:
    """Pack the scheduled sequences' new tokens, positions and cache slots.

    Invariant: sequence i's rows are `query_start_loc[i]:query_start_loc[i+1]`; row r holds token
    position `pos[r]`, written to slot `block_table[pos // bs] * bs + pos % bs`. Single-token
    (decode) sequences are packed first, so a backend can run them through its decode kernel and
    only the rest through the prefill kernel. `sample_rows` follows `out.scheduled`'s order.
    """
    ids: list[int] = []
    pos: list[int] = []
    slots: list[int] = []
    qsl = [0]
    seq_lens: list[int] = []
    q_lens: list[int] = []
    tables: list[list[int]] = []
    sample_rows: list[int] = []
    spans: list[tuple[int, int, int]] = []
    placeholders: list[tuple[int, int]] = []
    last_row = [0] * len(out.scheduled)
    order = ([i for i, s in enumerate(out.scheduled) if s.num_tokens == 1]
             + [i for i, s in enumerate(out.scheduled) if s.num_tokens != 1])
    for i in order:
        s = out.scheduled[i]
        seq, start, n = s.seq, s.start, s.num_tokens
        end = start + n
        chunk = seq.token_ids[start:end]
        if seq.num_pending and end > len(seq.token_ids) - seq.num_pending:
            base = qsl[-1]
            placeholders.extend((base + j, seq.seq_id) for j, t in enumerate(chunk)
                                if t == PLACEHOLDER)
            chunk = [0 if t == PLACEHOLDER else t for t in chunk]
        ids.extend(chunk)
        pos.extend(range(start, end))
        table = seq.block_table
        slots.extend(table[p // block_size] * block_size + p % block_size for p in range(start, end))
        if s.wants_prompt_logprobs:
            spans.append((i, qsl[-1], n))
        qsl.append(qsl[-1] + n)
        seq_lens.append(end)
        q_lens.append(n)
        tables.append(table)
        last_row[i] = qsl[-1] - 1
    for i, s in enumerate(out.scheduled):
        sample_rows.extend([last_row[i]] * len(s.sample_seqs))
    width = max([len(t) for t in tables] + [pad_block_tables_to, 1])
    bt_np = np.zeros((len(tables), width), dtype=np.int32)
    for i, t in enumerate(tables):
        bt_np[i, :len(t)] = t
    bt = torch.from_numpy(bt_np)
    meta = AttentionMetadata(
        num_seqs=len(tables),
        num_tokens=len(ids),
        slot_mapping=to_device(slots, torch.int64, device),
        query_start_loc=to_device(qsl, torch.int32, device),
        seq_lens=to_device(seq_lens, torch.int32, device),
        block_tables=to_device(bt, torch.int32, device),
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
    )


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
