"""Per-step attention metadata: one object, built by the model runner, passed down explicitly."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class MixedLayout:
    """A step of decodes and prefills laid out for a captured CUDA graph (static shapes).

    Every one of the step's T (padded) rows is offered to the decode kernel, which attends row i
    over `seq_lens[i]` keys and skips rows with `seq_lens[i] == 0` (prefill rows, padding); the
    prefill kernel then writes the rows of at most `num_prefill_slots` prefills, whose query rows
    are `prefill_query_start_loc[s]:prefill_query_start_loc[s+1]` (absolute rows; an empty range
    marks an unused slot). Grids depend on T and the slot count only, never on the step.
    """

    prefill_block_tables: torch.Tensor  # [slots, max_blocks_per_seq] int32
    prefill_seq_lens: torch.Tensor  # [slots] int32
    prefill_query_start_loc: torch.Tensor  # [slots + 1] int32, absolute query rows


@dataclass
class AttentionMetadata:
    """Where each scheduled sequence's queries, cache slots and context live this step.

    Sequences are packed: sequence i owns query rows `query_start_loc[i]:query_start_loc[i+1]`,
    which are its last `query_len` tokens, at positions `seq_lens[i] - query_len ... seq_lens[i]-1`.
    Its KV (cached prefix plus the new tokens, written before attention runs) is at the slots
    named by `block_tables[i]`. `slot_mapping[t] < 0` marks a padding token (never written).
    """

    num_seqs: int
    num_tokens: int
    slot_mapping: torch.Tensor  # [num_tokens] int64
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    seq_lens: torch.Tensor  # [num_seqs] int32, context length including this step's tokens
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32, padded with 0
    max_query_len: int
    max_seq_len: int
    # Host-side copies: the torch path loops over sequences without device syncs.
    query_lens_cpu: Optional[list[int]] = None
    seq_lens_cpu: Optional[list[int]] = None
    # Set on the static metadata of a mixed-step CUDA graph (engine/cuda_graphs.py): `seq_lens`
    # and `block_tables` then describe the decode rows only (see MixedLayout).
    mixed: Optional[MixedLayout] = None

    @property
    def is_decode_only(self) -> bool:
        return self.max_query_len == 1
