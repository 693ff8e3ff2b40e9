"""Per-step attention metadata: one object, built by the model runner, passed down explicitly."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


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

    @property
    def is_decode_only(self) -> bool:
        return self.max_query_len == 1
