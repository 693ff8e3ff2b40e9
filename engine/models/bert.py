"""BERT-family encoder (BertModel: all-MiniLM, bge, e5, ...), HF module names, for pooling.

Bidirectional attention over a padded batch `[B, T]` with an attention mask; no KV cache (an
encoder reads each input once). Returns the last hidden states; pooling (mean, CLS) and
normalisation belong to `engine.pooling`. The checkpoint's `pooler.*` head (tanh over the CLS
row, used for next-sentence prediction) is not part of sentence embeddings and is not loaded.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.utils import WeightLoader

# Checkpoint entries that are not learned weights of the encoder.
_SKIPPED = ("embeddings.position_ids", "pooler.", "cls.")


def _activation(name: str):
    if name == "gelu":
        return lambda x: F.gelu(x)  # exact (erf) GELU, as BERT was trained
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"BERT hidden_act '{name}' is not supported (gelu, gelu_new, relu)")


class BertEmbeddings(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
             + self.token_type_embeddings(token_type_ids))
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape

        def heads(proj: nn.Linear) -> torch.Tensor:
            return proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.query), heads(self.key), heads(self.value)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim) + mask_bias
        out = torch.softmax(scores, dim=-1) @ v
        return out.transpose(1, 2).reshape(b, t, h)


class BertSelfOutput(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_bias), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = _activation(getattr(config, "hidden_act", "gelu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertLayer(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask_bias)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask_bias)
        return x


class BertModel(nn.Module):
    """input_ids, attention_mask [B, T] -> last hidden states [B, T, hidden]."""

    def __init__(self, hf_config: Any):
        super().__init__()
        if getattr(hf_config, "position_embedding_type", "absolute") != "absolute":
            raise ValueError("BERT position_embedding_type "
                             f"'{hf_config.position_embedding_type}' is not supported (absolute)")
        self.config = hf_config
        self.embeddings = BertEmbeddings(hf_config)
        self.encoder = BertEncoder(hf_config)

    @property
    def max_positions(self) -> int:
        return int(self.config.max_position_embeddings)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        if input_ids.shape[1] > self.max_positions:
            raise ValueError(f"input: {input_ids.shape[1]} tokens exceed the model's "
                             f"{self.max_positions} positions")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        # Padding keys get a large negative bias (finite: a fully padded row stays NaN-free).
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        return self.encoder(x, mask_bias)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors (with or without the `bert.` prefix of task checkpoints)."""
        loader = WeightLoader(self)
        for name, tensor in weights:
            name = name.removeprefix("bert.")
            if name.startswith(_SKIPPED):
                continue
            loader.copy(name, tensor)
        loader.finish()
