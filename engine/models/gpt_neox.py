"""GPT-NeoX / Pythia (GPTNeoXForCausalLM) over flat token rows, HF module names.

HF's fused `query_key_value` rows are laid out per head as `[heads, 3 (q,k,v), head_dim]`; the
layer keeps that layout (so quantized and packed tensors load unchanged, and heads stay contiguous
for tensor parallelism) and the forward pass views its output per head before splitting. Rotary covers the first
`rotary_pct` of each head (neox style). Both residual layouts are supported: parallel
(`x + attn(ln1(x)) + mlp(ln2(x))`) and sequential. The LM head is `lm_head` (transformers 5.x) and
loads from 4.x/hub checkpoints' `embed_out` too.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
from torch import nn

from engine.attention.metadata import AttentionMetadata
from engine.distributed.parallel_state import heads_per_rank
from engine.layers.activation import Activation
from engine.layers.attention import Attention
from engine.layers.linear import ColumnParallelLinear, RowParallelLinear
from engine.layers.rotary import get_rope
from engine.layers.vocab_parallel import ParallelLMHead, VocabParallelEmbedding
from engine.models.utils import WeightLoader, is_ignored
from engine.quantization.base import QuantizationConfig


class GPTNeoXAttention(nn.Module):
    def __init__(self, config: Any, rotary_emb: nn.Module,
                 quant_config: Optional[QuantizationConfig], prefix: str):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_size = hidden // self.num_heads
        bias = getattr(config, "attention_bias", True)
        # Row order (HF's): [heads, 3 (q, k, v), head_size].
        self.query_key_value = ColumnParallelLinear(hidden, 3 * hidden, bias, quant_config,
                                                    f"{prefix}.query_key_value")
        self.dense = RowParallelLinear(hidden, hidden, bias, quant_config, f"{prefix}.dense")
        self.rotary_emb = rotary_emb  # shared by every layer
        self.attn = Attention(heads_per_rank(self.num_heads), self.head_size,
                              self.head_size ** -0.5)

    def forward(self, positions: torch.Tensor, x: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        n = x.shape[0]
        qkv = self.query_key_value(x).view(n, -1, 3, self.head_size)
        q, k, v = (qkv[:, :, i].reshape(n, -1) for i in range(3))
        q, k = self.rotary_emb(positions, q, k)
        return self.dense(self.attn(q, k, v, meta))


class GPTNeoXMLP(nn.Module):
    def __init__(self, config: Any, quant_config: Optional[QuantizationConfig], prefix: str):
        super().__init__()
        self.dense_h_to_4h = ColumnParallelLinear(config.hidden_size, config.intermediate_size,
                                                  True, quant_config, f"{prefix}.dense_h_to_4h")
        self.dense_4h_to_h = RowParallelLinear(config.intermediate_size, config.hidden_size, True,
                                               quant_config, f"{prefix}.dense_4h_to_h")
        self.act = Activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class GPTNeoXLayer(nn.Module):
    def __init__(self, config: Any, rotary_emb: nn.Module,
                 quant_config: Optional[QuantizationConfig], prefix: str):
        super().__init__()
        self.use_parallel_residual = config.use_parallel_residual
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = GPTNeoXAttention(config, rotary_emb, quant_config, f"{prefix}.attention")
        self.mlp = GPTNeoXMLP(config, quant_config, f"{prefix}.mlp")

    def forward(self, positions: torch.Tensor, x: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        attn = self.attention(positions, self.input_layernorm(x), meta)
        if self.use_parallel_residual:
            return self.mlp(self.post_attention_layernorm(x)) + attn + x
        attn = attn + x
        return self.mlp(self.post_attention_layernorm(attn)) + attn


class GPTNeoXModel(nn.Module):
    def __init__(self, config: Any, quant_config: Optional[QuantizationConfig]):
        super().__init__()
        self.embed_in = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        rotary_emb = get_rope(config, config.hidden_size // config.num_attention_heads)
        self.layers = nn.ModuleList(GPTNeoXLayer(config, rotary_emb, quant_config,
                                                 f"gpt_neox.layers.{i}")
                                    for i in range(config.num_hidden_layers))
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        x = self.embed_in(input_ids)
        for layer in self.layers:
            x = layer(positions, x, meta)
        return self.final_layer_norm(x)


class GPTNeoXForCausalLM(nn.Module):
    """GPT-NeoX causal LM (Pythia and friends)."""

    supports_quantization = True

    def __init__(self, hf_config: Any, quant_config: Optional[QuantizationConfig] = None):
        super().__init__()
        self.config = hf_config
        self.gpt_neox = GPTNeoXModel(hf_config, quant_config)
        self.lm_head = ParallelLMHead(hf_config.vocab_size, hf_config.hidden_size)
        self.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head.tie(self.gpt_neox.embed_in)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions [T] -> final hidden states [T, hidden]."""
        return self.gpt_neox(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> float32 logits [N, vocab]."""
        return self.lm_head(hidden).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors; raises ValueError on unknown names or missing parameters."""
        loader = WeightLoader(self)
        for name, tensor in weights:
            if is_ignored(name):
                continue
            if name == "embed_out.weight":
                name = "lm_head.weight"
            if name == "lm_head.weight" and self.tie_word_embeddings:
                continue
            loader.copy(name, tensor)
        loader.finish()
