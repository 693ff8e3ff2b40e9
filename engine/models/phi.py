"""Phi-1 / Phi-1.5 / Phi-2 (PhiForCausalLM) over flat token rows, HF module names.

Each layer runs attention and the MLP in parallel on one LayerNorm's output and adds both to the
residual: `x + attn(ln(x)) + mlp(ln(x))`. RoPE covers the first `partial_rotary_factor` of each
head (neox style); q/k/v/dense and the MLP carry biases, optional per-head LayerNorms on q and k
(`qk_layernorm`), GELU (`gelu_new`), and an untied LM head with a bias. q/k/v load into one fused
`qkv_proj`. Quantized checkpoints load as in Llama (each linear gets the quant config and its
checkpoint module names); LayerNorm and GELU emit no quantized input, so W8A8 linears quantize
their inputs themselves.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
from torch import nn

from engine.attention.metadata import AttentionMetadata
from engine.layers.activation import Activation
from engine.layers.attention import Attention
from engine.layers.rotary import get_rope
from engine.distributed.parallel_state import heads_per_rank, kv_heads_per_rank
from engine.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from engine.layers.vocab_parallel import ParallelLMHead, VocabParallelEmbedding
from engine.models.qwen3 import head_dim_of, kv_heads_of, layer_sliding_window
from engine.models.registry import check_quantization_support
from engine.models.stacked_loading import QKV_GATE_UP, load_stacked
from engine.quantization.base import QuantizationConfig


class PhiAttention(nn.Module):
    def __init__(self, config: Any, layer_idx: int, rotary_emb: nn.Module,
                 quant_config: Optional[QuantizationConfig], prefix: str):
        super().__init__()
        self.num_heads = heads_per_rank(config.num_attention_heads)  # this rank's heads
        self.num_kv_heads = kv_heads_per_rank(kv_heads_of(config))
        self.head_dim = head_dim_of(config)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim,
                                          config.num_attention_heads, kv_heads_of(config),
                                          bias=True, quant_config=quant_config,
                                          prefixes=[f"{prefix}.{p}_proj" for p in "qkv"])
        self.dense = RowParallelLinear(config.num_attention_heads * self.head_dim,
                                       config.hidden_size, bias=True, quant_config=quant_config,
                                       prefix=f"{prefix}.dense")
        self.qk_layernorm = bool(getattr(config, "qk_layernorm", False))
        if self.qk_layernorm:
            self.q_layernorm = nn.LayerNorm(self.head_dim, eps=config.layer_norm_eps)
            self.k_layernorm = nn.LayerNorm(self.head_dim, eps=config.layer_norm_eps)
        self.rotary_emb = rotary_emb  # shared by every layer
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim ** -0.5,
                              self.num_kv_heads, layer_sliding_window(config, layer_idx))

    def forward(self, positions: torch.Tensor, x: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.qk_layernorm:
            n = q.shape[0]
            q = self.q_layernorm(q.reshape(n, -1, self.head_dim)).reshape(n, self.q_size)
            k = self.k_layernorm(k.reshape(n, -1, self.head_dim)).reshape(n, self.kv_size)
        q, k = self.rotary_emb(positions, q, k)
        return self.dense(self.attn(q, k, v, meta))


class PhiMLP(nn.Module):
    def __init__(self, config: Any, quant_config: Optional[QuantizationConfig], prefix: str):
        super().__init__()
        self.fc1 = ColumnParallelLinear(config.hidden_size, config.intermediate_size,
                                        quant_config=quant_config, prefix=f"{prefix}.fc1")
        self.fc2 = RowParallelLinear(config.intermediate_size, config.hidden_size,
                                     quant_config=quant_config, prefix=f"{prefix}.fc2")
        self.activation_fn = Activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(x)))


class PhiDecoderLayer(nn.Module):
    def __init__(self, config: Any, layer_idx: int, rotary_emb: nn.Module,
                 quant_config: Optional[QuantizationConfig]):
        super().__init__()
        prefix = f"model.layers.{layer_idx}"
        self.self_attn = PhiAttention(config, layer_idx, rotary_emb, quant_config,
                                      f"{prefix}.self_attn")
        self.mlp = PhiMLP(config, quant_config, f"{prefix}.mlp")
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, positions: torch.Tensor, x: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        h = self.input_layernorm(x)
        return self.self_attn(positions, h, meta) + self.mlp(h) + x


class PhiModel(nn.Module):
    def __init__(self, config: Any, quant_config: Optional[QuantizationConfig] = None):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        rotary_emb = get_rope(config, head_dim_of(config))
        self.layers = nn.ModuleList(PhiDecoderLayer(config, i, rotary_emb, quant_config)
                                    for i in range(config.num_hidden_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(positions, x, meta)
        return self.final_layernorm(x)


class PhiForCausalLM(nn.Module):
    """Phi causal LM (see module docstring)."""

    supports_quantization = True

    def __init__(self, hf_config: Any, quant_config: Optional[QuantizationConfig] = None):
        super().__init__()
        check_quantization_support(type(self), quant_config)
        self.config = hf_config
        self.model = PhiModel(hf_config, quant_config)
        self.lm_head = ParallelLMHead(hf_config.vocab_size, hf_config.hidden_size, bias=True)
        self.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head.tie(self.model.embed_tokens)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions [T] -> final hidden states [T, hidden]."""
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> float32 logits [N, vocab]."""
        return self.lm_head(hidden).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors; raises ValueError on unknown names or missing parameters."""
        load_stacked(self, weights, QKV_GATE_UP, tied_head=self.tie_word_embeddings)
