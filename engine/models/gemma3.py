"""Gemma 3 text models (Gemma3ForCausalLM) over flat token rows, HF module names.

Differences from Llama, all as HF computes them:
- RMSNorms scale by `(1 + w)` in float32 (GemmaRMSNorm); besides the input and post-attention
  norms each layer has pre- and post-feedforward norms, and q/k get per-head norms before RoPE;
- embeddings are multiplied by sqrt(hidden_size) (rounded to the weight dtype);
- the MLP is GELU(tanh)-gated: `down(gelu_tanh(gate(x)) * up(x))`;
- attention scale is `query_pre_attn_scalar ** -0.5`;
- `layer_types` alternates local sliding-window layers and global layers, each kind with its own
  RoPE parameters (transformers 5.x `rope_parameters[layer_type]`; 4.x: `rope_local_base_freq`
  for local layers);
- logits are soft-capped, `cap * tanh(logits / cap)`, when `final_logit_softcapping` is set.
Gemma 2 (Gemma2ForCausalLM, engine/models/gemma2.py) is the same layout without the q/k norms,
with one RoPE for every layer, sliding-window layers alternating with global ones, and attention
scores soft-capped (`attn_logit_softcapping`, done inside the attention kernels). Bidirectional
attention is not implemented and is refused at construction.
Quantized checkpoints load as in Llama (each linear gets the quant config and its checkpoint
module names). No input-quantization fusion: the (1 + w) norms and the GELU-gated MLP are not
the RMSNorm / SiLU-and-mul producers that can emit a quantized input, so W8A8 linears quantize
their inputs themselves.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
from torch import nn

from engine.attention.metadata import AttentionMetadata
from engine.layers.activation import get_act_fn
from engine.layers.attention import Attention
from engine.layers.layernorm import GemmaRMSNorm
from engine.layers.rotary import get_rope, rope_settings
from engine.distributed.parallel_state import heads_per_rank, kv_heads_per_rank
from engine.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from engine.layers.vocab_parallel import ParallelLMHead, VocabParallelEmbedding
from engine.models.qwen3 import head_dim_of, kv_heads_of
from engine.models.registry import check_quantization_support
from engine.models.stacked_loading import QKV_GATE_UP, load_stacked
from engine.quantization.base import QuantizationConfig


def is_gemma2(config: Any) -> bool:
    return getattr(config, "model_type", "") == "gemma2"


def layer_types(config: Any) -> list[str]:
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)
    pattern = getattr(config, "sliding_window_pattern", None) or (2 if is_gemma2(config) else 6)
    return ["sliding_attention" if (i + 1) % pattern else "full_attention"
            for i in range(config.num_hidden_layers)]


def rope_for(config: Any, kind: str, head_dim: int) -> nn.Module:
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and isinstance(params.get(kind), dict):
        return get_rope(config, head_dim, layer_type=kind)
    settings = rope_settings(config)  # 4.x: global settings; local layers use their own base
    if kind == "sliding_attention" and not is_gemma2(config):  # Gemma 2: one RoPE for all
        settings = {"rope_type": "default", "partial_rotary_factor": 1.0,
                    "rope_theta": float(getattr(config, "rope_local_base_freq", 10000.0))}
    return get_rope(config, head_dim, settings=settings)


class Gemma3Attention(nn.Module):
    def __init__(self, config: Any, kind: str, rotary_emb: nn.Module,
                 quant_config: Optional[QuantizationConfig], prefix: str):
        super().__init__()
        self.num_heads = heads_per_rank(config.num_attention_heads)  # this rank's heads
        self.num_kv_heads = kv_heads_per_rank(kv_heads_of(config))
        self.head_dim = head_dim_of(config)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        bias = bool(getattr(config, "attention_bias", False))
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim,
                                          config.num_attention_heads, kv_heads_of(config),
                                          bias=bias, quant_config=quant_config,
                                          prefixes=[f"{prefix}.{p}_proj" for p in "qkv"])
        self.o_proj = RowParallelLinear(config.num_attention_heads * self.head_dim,
                                        config.hidden_size, bias=bias,
                                        quant_config=quant_config, prefix=f"{prefix}.o_proj")
        self.qk_norm = not is_gemma2(config)
        if self.qk_norm:
            self.q_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps)
        self.rotary_emb = rotary_emb  # shared by the layers of this kind
        window = config.sliding_window if kind == "sliding_attention" else None
        self.attn = Attention(self.num_heads, self.head_dim, config.query_pre_attn_scalar ** -0.5,
                              self.num_kv_heads, window,
                              logit_softcap=getattr(config, "attn_logit_softcapping", None))

    def forward(self, positions: torch.Tensor, x: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.qk_norm:
            n = q.shape[0]
            q = self.q_norm(q.reshape(n, self.num_heads, self.head_dim)).reshape(n, self.q_size)
            k = self.k_norm(k.reshape(n, self.num_kv_heads, self.head_dim)).reshape(n,
                                                                                 self.kv_size)
        q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v, meta))


class Gemma3MLP(nn.Module):
    def __init__(self, config: Any, quant_config: Optional[QuantizationConfig], prefix: str):
        super().__init__()
        act = getattr(config, "hidden_activation", None) or config.hidden_act
        self.act_fn = get_act_fn(act)
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size, [config.intermediate_size] * 2, bias=False,
            quant_config=quant_config, prefixes=[f"{prefix}.gate_proj", f"{prefix}.up_proj"])
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size,
                                           bias=False, quant_config=quant_config,
                                           prefix=f"{prefix}.down_proj")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, config: Any, kind: str, rotary_emb: nn.Module,
                 quant_config: Optional[QuantizationConfig], prefix: str):
        super().__init__()
        h, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn = Gemma3Attention(config, kind, rotary_emb, quant_config,
                                         f"{prefix}.self_attn")
        self.mlp = Gemma3MLP(config, quant_config, f"{prefix}.mlp")
        self.input_layernorm = GemmaRMSNorm(h, eps)
        self.post_attention_layernorm = GemmaRMSNorm(h, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(h, eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(h, eps)

    def forward(self, positions: torch.Tensor, x: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        attn = self.self_attn(positions, self.input_layernorm(x), meta)
        x = x + self.post_attention_layernorm(attn)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma3Model(nn.Module):
    def __init__(self, config: Any, quant_config: Optional[QuantizationConfig] = None):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        kinds = layer_types(config)
        head_dim = head_dim_of(config)
        ropes = {kind: rope_for(config, kind, head_dim) for kind in sorted(set(kinds))}
        self.layers = nn.ModuleList(
            Gemma3DecoderLayer(config, kind, ropes[kind], quant_config, f"model.layers.{i}")
            for i, kind in enumerate(kinds))
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        # sqrt(hidden) rounded to the weights' dtype first, as HF scales (a host-side scalar).
        x = x * torch.tensor(self.hidden_size ** 0.5, dtype=x.dtype).item()
        for layer in self.layers:
            x = layer(positions, x, meta)
        return self.norm(x)


class Gemma3ForCausalLM(nn.Module):
    """Gemma 3 text causal LM (see module docstring); the LM head is tied by default."""

    supports_quantization = True

    def __init__(self, hf_config: Any, quant_config: Optional[QuantizationConfig] = None):
        super().__init__()
        check_quantization_support(type(self), quant_config)
        if getattr(hf_config, "use_bidirectional_attention", False):
            raise ValueError(f"{type(self).__name__}: use_bidirectional_attention (an encoder) "
                             "is not supported")
        self.config = hf_config
        self.model = Gemma3Model(hf_config, quant_config)
        self.lm_head = ParallelLMHead(hf_config.vocab_size, hf_config.hidden_size)
        self.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", True))
        if self.tie_word_embeddings:
            self.lm_head.tie(self.model.embed_tokens)
        self.softcap: Optional[float] = getattr(hf_config, "final_logit_softcapping", None)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions [T] -> final hidden states [T, hidden]."""
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> float32 logits [N, vocab], soft-capped when configured."""
        logits = self.lm_head(hidden)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits.float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors; raises ValueError on unknown names or missing parameters."""
        load_stacked(self, weights, QKV_GATE_UP, tied_head=self.tie_word_embeddings)
