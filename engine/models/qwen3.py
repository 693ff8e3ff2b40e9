"""Qwen3 (Qwen3ForCausalLM) and the Llama-style decoder the newer model files share.

A Qwen3 layer is a Llama layer whose queries and keys pass a per-head RMSNorm (`q_norm`,
`k_norm`, over head_dim) before RoPE. `Qwen3Model` takes the MLP from its causal-LM class
(`make_mlp`), so Phi-3 (no q/k norm, checkpoint-fused projections) and the mixture-of-experts
models (Mixtral, Qwen3-MoE, Qwen2-MoE: a sparse block instead of the dense MLP) reuse it.
q/k/v are fused into `qkv_proj` and gate/up into `gate_up_proj` (engine/layers/linear.py, each
parameter loading its tensor-parallel shard); loading routes HF's separate tensors into their fused
shards (engine/models/stacked_loading.py). Heads, KV heads, the MLP and the vocabulary are split
over the tensor-parallel ranks.

Quantized checkpoints (GPTQ, AWQ, AutoRound, compressed-tensors, FP8) load as in Llama: every
linear gets the quant config and its checkpoint module names (`prefix`es), so the scheme's
ignore list applies and quantized tensors (qweight, scales, weight_packed, ...) load into the
fused layers' shards. Models whose checkpoints fuse q/k/v and gate/up themselves (Phi-3:
`checkpoint_fused`) name the fused module. The norm / SiLU feeding a W8A8 linear quantize its
input themselves (`input_quant_fusions`, engine/quantization/input_quant.py).
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
from torch import nn

from engine.attention.metadata import AttentionMetadata
from engine.layers.activation import SiluAndMul
from engine.layers.attention import Attention
from engine.distributed.parallel_state import heads_per_rank, kv_heads_per_rank
from engine.layers.layernorm import RMSNorm
from engine.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from engine.layers.rotary import get_rope
from engine.layers.vocab_parallel import ParallelLMHead, VocabParallelEmbedding
from engine.models.registry import check_quantization_support
from engine.models.stacked_loading import QKV_GATE_UP, load_stacked
from engine.quantization.base import QuantizationConfig


def layer_sliding_window(config: Any, layer_idx: int) -> Optional[int]:
    """The layer's sliding window: `layer_types` decides when the config has it (transformers 5.x),
    otherwise `sliding_window` applies to every layer unless `use_sliding_window` is False."""
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return window if layer_types[layer_idx] == "sliding_attention" else None
    return window


def head_dim_of(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def kv_heads_of(config: Any) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


class Qwen3Attention(nn.Module):
    def __init__(self, config: Any, layer_idx: int, rotary_emb: nn.Module, qk_norm: bool,
                 qkv_bias: bool, o_bias: bool, quant_config: Optional[QuantizationConfig] = None,
                 prefix: str = "", checkpoint_fused: bool = False):
        super().__init__()
        # This rank's heads (KV heads replicated when there are fewer than ranks).
        self.num_heads = heads_per_rank(config.num_attention_heads)
        self.num_kv_heads = kv_heads_per_rank(kv_heads_of(config))
        self.head_dim = head_dim_of(config)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        # Rows of qkv_proj: [q (q_size) | k (kv_size) | v (kv_size)].
        qkv_names = ([f"{prefix}.qkv_proj"] if checkpoint_fused
                     else [f"{prefix}.{p}_proj" for p in "qkv"])
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim,
                                          config.num_attention_heads, kv_heads_of(config),
                                          bias=qkv_bias, quant_config=quant_config,
                                          prefixes=qkv_names)
        self.o_proj = RowParallelLinear(config.num_attention_heads * self.head_dim,
                                        config.hidden_size, bias=o_bias,
                                        quant_config=quant_config, prefix=f"{prefix}.o_proj")
        self.qk_norm = qk_norm
        if qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.rotary_emb = rotary_emb  # shared by every layer
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim ** -0.5,
                              self.num_kv_heads, layer_sliding_window(config, layer_idx))

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


class Qwen3MLP(nn.Module):
    """Gated SiLU MLP (gate_up_proj rows: [gate | up])."""

    # The SiLU-and-mul emits down_proj's quantized input when down_proj quantizes it per token.
    input_quant_fusions = (("act_fn", "down_proj"),)

    def __init__(self, hidden_size: int, intermediate_size: int, hidden_act: str = "silu",
                 bias: bool = False, quant_config: Optional[QuantizationConfig] = None,
                 prefix: str = "", checkpoint_fused: bool = False):
        super().__init__()
        if hidden_act != "silu":
            raise ValueError(f"gated MLP supports hidden_act 'silu', got '{hidden_act}'")
        gate_up_names = ([f"{prefix}.gate_up_proj"] if checkpoint_fused
                         else [f"{prefix}.gate_proj", f"{prefix}.up_proj"])
        self.gate_up_proj = MergedColumnParallelLinear(hidden_size, [intermediate_size] * 2,
                                                       bias=bias, quant_config=quant_config,
                                                       prefixes=gate_up_names)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias=bias,
                                           quant_config=quant_config,
                                           prefix=f"{prefix}.down_proj")
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class Qwen3DecoderLayer(nn.Module):
    # Producer -> the linear it feeds (engine/quantization/input_quant.py); a dense layer's MLP
    # input is added by `Qwen3DenseDecoderLayer`, a MoE block's router reads it unquantized.
    input_quant_fusions: tuple[tuple[str, str], ...] = (("input_layernorm", "self_attn.qkv_proj"),)

    def __init__(self, config: Any, attn: nn.Module, mlp: nn.Module, mlp_name: str = "mlp"):
        super().__init__()
        self.self_attn = attn
        self.mlp_name = mlp_name
        setattr(self, mlp_name, mlp)  # HF's name: `mlp`, or Mixtral's `block_sparse_moe`
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, residual: Optional[torch.Tensor],
                meta: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        # Invariant: `x + residual` is the residual stream entering this layer (residual None on
        # the first layer); the adds are fused into the norms.
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(positions, x, meta)
        x, residual = self.post_attention_layernorm(x, residual)
        return getattr(self, self.mlp_name)(x), residual


class Qwen3DenseDecoderLayer(Qwen3DecoderLayer):
    """A layer whose MLP is the dense `Qwen3MLP` named `mlp`: its norm feeds gate_up_proj."""

    input_quant_fusions = Qwen3DecoderLayer.input_quant_fusions + (
        ("post_attention_layernorm", "mlp.gate_up_proj"),)


def make_layer(config: Any, attn: nn.Module, mlp: nn.Module, mlp_name: str) -> Qwen3DecoderLayer:
    dense = mlp_name == "mlp" and isinstance(mlp, Qwen3MLP)
    return (Qwen3DenseDecoderLayer if dense else Qwen3DecoderLayer)(config, attn, mlp, mlp_name)


class Qwen3Model(nn.Module):
    def __init__(self, config: Any, lm: "Qwen3ForCausalLM",
                 quant_config: Optional[QuantizationConfig] = None):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        rotary_emb = get_rope(config, head_dim_of(config))
        self.layers = nn.ModuleList(
            make_layer(config, Qwen3Attention(config, i, rotary_emb, lm.qk_norm,
                                              lm.qkv_bias(config), lm.o_bias(config),
                                              quant_config, f"model.layers.{i}.self_attn",
                                              lm.checkpoint_fused),
                       lm.make_mlp(config, i, quant_config), lm.mlp_name)
            for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        x, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            x, residual = layer(positions, x, residual, meta)
        x, _ = self.norm(x, residual)
        return x


class Qwen3ForCausalLM(nn.Module):
    """Qwen3 causal LM; subclasses change the class attributes and hooks below."""

    qk_norm = True
    mlp_name = "mlp"
    # HF name fragment -> (our fused layer fragment, shard id).
    stacked_params: dict[str, tuple[str, object]] = QKV_GATE_UP
    # True when the checkpoint holds qkv_proj / gate_up_proj already fused (Phi-3).
    checkpoint_fused = False
    supports_quantization = True

    def __init__(self, hf_config: Any, quant_config: Optional[QuantizationConfig] = None):
        super().__init__()
        check_quantization_support(type(self), quant_config)
        self.config = hf_config
        self.model = Qwen3Model(hf_config, self, quant_config)
        self.lm_head = ParallelLMHead(hf_config.vocab_size, hf_config.hidden_size)
        self.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head.tie(self.model.embed_tokens)

    # ---- hooks -------------------------------------------------------------------------------
    def qkv_bias(self, config: Any) -> bool:
        return bool(getattr(config, "attention_bias", False))

    def o_bias(self, config: Any) -> bool:
        return bool(getattr(config, "attention_bias", False))

    def make_mlp(self, config: Any, layer_idx: int,
                 quant_config: Optional[QuantizationConfig] = None) -> nn.Module:
        return Qwen3MLP(config.hidden_size, config.intermediate_size,
                        getattr(config, "hidden_act", "silu"), quant_config=quant_config,
                        prefix=f"model.layers.{layer_idx}.mlp",
                        checkpoint_fused=self.checkpoint_fused)

    def expert_mapper(self):
        return None

    # ---- model interface ---------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions [T] -> final hidden states [T, hidden]."""
        return self.model(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> float32 logits [N, vocab]."""
        return self.lm_head(hidden).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors; raises ValueError on unknown names or missing parameters."""
        load_stacked(self, weights, self.stacked_params, experts=self.expert_mapper(),
                     tied_head=self.tie_word_embeddings)
