"""Token embedding and LM head split over the tensor-parallel ranks along the vocabulary.

The vocabulary is padded to a multiple of the world size; rank r holds rows
[r * V_r, (r + 1) * V_r) (padding rows are zero). The embedding looks up the ids a rank owns,
zeroes the others and all-reduces (each id's row comes from exactly one rank, so the sum is
exact); the LM head computes its slice of the logits and all-gathers them, dropping the padding.
With one rank both are the plain full-vocabulary ops (no masks, no collectives).
Each parameter's `weight_loader` takes this rank's rows of the checkpoint's full [V, H] tensor.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from engine.distributed import parallel_state
from engine.quantization.unquantized import dense_linear


class VocabParallelEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.tp_size, self.tp_rank = parallel_state.tp_size(), parallel_state.tp_rank()
        self.rows_per_rank = -(-num_embeddings // self.tp_size)
        self.start = self.tp_rank * self.rows_per_rank
        self.end = min(self.start + self.rows_per_rank, num_embeddings)
        self.weight = nn.Parameter(torch.empty(self.rows_per_rank, embedding_dim),
                                   requires_grad=False)
        self.weight.weight_loader = self.weight_loader

    @torch.no_grad()
    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor,
                      shard_id: Optional[int] = None) -> int:
        if shard_id is not None:
            raise ValueError("a vocab-parallel weight has no fused shards")
        if loaded.dim() != 2 or loaded.shape[0] != self.num_embeddings or \
                loaded.shape[1] != param.shape[1]:
            raise ValueError(f"has shape {tuple(loaded.shape)}, expected "
                             f"({self.num_embeddings}, {param.shape[1]})")
        n = self.end - self.start
        param.data[:n].copy_(loaded[self.start:self.end])
        param.data[n:].zero_()
        return param.numel()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        owned = (input_ids >= self.start) & (input_ids < self.end)
        local = torch.where(owned, input_ids - self.start, torch.zeros_like(input_ids))
        out = F.embedding(local, self.weight) * owned.unsqueeze(-1).to(self.weight.dtype)
        return parallel_state.all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """hidden [N, H] -> logits [N, V] (gathered over ranks); `tie` shares the embedding's
    weight shard."""

    def __init__(self, num_embeddings: int, embedding_dim: int, bias: bool = False):
        super().__init__(num_embeddings, embedding_dim)
        if bias:
            self.bias = nn.Parameter(torch.empty(self.rows_per_rank), requires_grad=False)
            self.bias.weight_loader = self._bias_loader
        else:
            self.register_parameter("bias", None)

    def tie(self, embedding: VocabParallelEmbedding) -> None:
        self.weight = embedding.weight

    @torch.no_grad()
    def _bias_loader(self, param: nn.Parameter, loaded: torch.Tensor,
                     shard_id: Optional[int] = None) -> int:
        return self.weight_loader(param.view(-1, 1), loaded.view(-1, 1), shard_id)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = dense_linear(hidden, self.weight, self.bias)
        if self.tp_size == 1:
            return logits
        return parallel_state.all_gather_last_dim(logits)[..., :self.num_embeddings]
