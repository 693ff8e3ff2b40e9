"""Llama-family decoder (Llama 2/3, Mistral, Qwen2): one implementation, HF module names.

q/k/v are fused into `qkv_proj` and gate/up into `gate_up_proj` (one matmul each); `load_weights`
routes HF's separate `q_proj`/`k_proj`/`v_proj`/`gate_proj`/`up_proj` tensors (dense or quantized:
qweight, scales, ...) to the fused layers' shard loaders.
Differences between the families are config-driven: Qwen2 has q/k/v biases, Mistral (and Qwen2
layers marked sliding) pass `sliding_window` to attention, `head_dim` is read when present.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Union

import torch
from torch import nn

from engine.attention.metadata import AttentionMetadata
from engine.distributed.parallel_state import heads_per_rank, kv_heads_per_rank
from engine.layers.activation import SiluAndMul
from engine.layers.attention import Attention
from engine.layers.layernorm import RMSNorm
from engine.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from engine.layers.rotary import get_rope
from engine.layers.vocab_parallel import ParallelLMHead, VocabParallelEmbedding
from engine.models.utils import WeightLoader, is_ignored
from engine.quantization.base import QuantizationConfig


def _sliding_window(config: Any, layer_idx: int) -> Optional[int]:
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types:  # transformers 5.x (Qwen2 and others) name each layer's attention kind
        return window if layer_types[layer_idx] == "sliding_attention" else None
    if getattr(config, "model_type", "") == "qwen2":  # 4.x Qwen2: window only when enabled
        if not getattr(config, "use_sliding_window", False):
            return None
        return window if layer_idx >= getattr(config, "max_window_layers", 0) else None
    return window


class LlamaAttention(nn.Module):
    def __init__(self, config: Any, layer_idx: int, qkv_bias: bool, o_bias: bool,
                 rotary_emb: nn.Module, quant_config: Optional[QuantizationConfig], prefix: str,
                 input_size: Optional[int] = None):
        super().__init__()
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        # This rank's heads (KV heads replicated when there are fewer than ranks).
        self.num_heads, self.num_kv_heads = heads_per_rank(heads), kv_heads_per_rank(kv_heads)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        # Rows of qkv_proj: [q (q_size) | k (kv_size) | v (kv_size)].
        # input_size: what q/k/v read (the EAGLE-3 head's layer reads 2 * hidden_size).
        self.qkv_proj = QKVParallelLinear(
            input_size or config.hidden_size, self.head_dim, heads, kv_heads, bias=qkv_bias,
            quant_config=quant_config, prefixes=[f"{prefix}.{p}_proj" for p in "qkv"])
        self.o_proj = RowParallelLinear(heads * self.head_dim, config.hidden_size, bias=o_bias,
                                        quant_config=quant_config, prefix=f"{prefix}.o_proj")
        self.rotary_emb = rotary_emb  # shared by every layer
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim ** -0.5,
                              self.num_kv_heads, _sliding_window(config, layer_idx))

    def forward(self, positions: torch.Tensor, x: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v, meta))


class LlamaMLP(nn.Module):
    def __init__(self, config: Any, bias: bool, quant_config: Optional[QuantizationConfig],
                 prefix: str):
        super().__init__()
        if getattr(config, "hidden_act", "silu") != "silu":
            raise ValueError(f"Llama-family MLP supports hidden_act 'silu', got '{config.hidden_act}'")
        # Rows of gate_up_proj: [gate (intermediate) | up (intermediate)].
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size, [config.intermediate_size] * 2, bias=bias,
            quant_config=quant_config, prefixes=[f"{prefix}.gate_proj", f"{prefix}.up_proj"])
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, bias=bias,
                                           quant_config=quant_config, prefix=f"{prefix}.down_proj")
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class LlamaDecoderLayer(nn.Module):
    # Producer -> the linear it feeds: with a W8A8 scheme quantizing inputs per token, the norm /
    # activation emits the quantized input itself (engine/quantization/input_quant.py).
    input_quant_fusions = (("input_layernorm", "self_attn.qkv_proj"),
                           ("post_attention_layernorm", "mlp.gate_up_proj"),
                           ("mlp.act_fn", "mlp.down_proj"))

    def __init__(self, config: Any, layer_idx: int, qkv_bias: bool, o_bias: bool,
                 rotary_emb: nn.Module, quant_config: Optional[QuantizationConfig], prefix: str):
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_idx, qkv_bias, o_bias, rotary_emb,
                                        quant_config, f"{prefix}.self_attn")
        self.mlp = LlamaMLP(config, bool(getattr(config, "mlp_bias", False)), quant_config,
                            f"{prefix}.mlp")
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
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    def __init__(self, config: Any, qkv_bias: bool, o_bias: bool,
                 quant_config: Optional[QuantizationConfig]):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        head_dim = (getattr(config, "head_dim", None)
                    or config.hidden_size // config.num_attention_heads)
        rotary_emb = get_rope(config, head_dim)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i, qkv_bias, o_bias, rotary_emb, quant_config,
                              f"model.layers.{i}")
            for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # Layer ids whose input residual stream the forward also returns (EAGLE-3's auxiliary
        # hidden states); id == len(layers) is the stream after the last layer, before the norm.
        self.aux_hidden_layers: tuple[int, ...] = ()

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
                ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        aux_ids = self.aux_hidden_layers
        aux: list[torch.Tensor] = []
        x, residual = self.embed_tokens(input_ids), None
        for i, layer in enumerate(self.layers):
            if i in aux_ids:
                stream = x if residual is None else x + residual
                aux += [stream] * aux_ids.count(i)
            x, residual = layer(positions, x, residual, meta)
        if len(self.layers) in aux_ids:
            aux += [x + residual] * aux_ids.count(len(self.layers))
        x, _ = self.norm(x, residual)
        if aux_ids:
            return x, torch.cat(aux, dim=-1)
        return x


class LlamaForCausalLM(nn.Module):
    """Llama / Mistral / Qwen2 causal LM over flat token rows (see module docstring)."""

    # HF name fragment -> (our fused layer fragment, shard id).
    stacked_params = {
        ".q_proj.": (".qkv_proj.", "q"), ".k_proj.": (".qkv_proj.", "k"),
        ".v_proj.": (".qkv_proj.", "v"),
        ".gate_proj.": (".gate_up_proj.", 0), ".up_proj.": (".gate_up_proj.", 1),
    }
    supports_quantization = True

    def __init__(self, hf_config: Any, quant_config: Optional[QuantizationConfig] = None):
        super().__init__()
        self.config = hf_config
        arch = (getattr(hf_config, "architectures", None) or [""])[0]
        if arch.startswith("Qwen2"):
            qkv_bias, o_bias = True, False
        else:
            qkv_bias = o_bias = bool(getattr(hf_config, "attention_bias", False))
        self.model = LlamaModel(hf_config, qkv_bias, o_bias, quant_config)
        self.lm_head = ParallelLMHead(hf_config.vocab_size, hf_config.hidden_size)
        self.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head.tie(self.model.embed_tokens)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
                ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """input_ids, positions [T] -> final hidden states [T, hidden]; with auxiliary layers
        set, also their residual streams side by side [T, len(aux_hidden_layers) * hidden]."""
        return self.model(input_ids, positions, meta)

    def set_aux_hidden_layers(self, layer_ids: Iterable[int]) -> None:
        """Return the residual stream entering each of `layer_ids` from every forward (in
        ascending id order; id == num_hidden_layers: after the last layer). Empty: stop."""
        ids = tuple(sorted(int(i) for i in layer_ids))
        n = len(self.model.layers)
        bad = [i for i in ids if not 0 <= i <= n]
        if bad:
            raise ValueError(f"auxiliary hidden-state layer ids {bad} out of range for a "
                             f"{n}-layer model (0..{n})")
        self.model.aux_hidden_layers = ids

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The token embeddings (an EAGLE-3 head without its own embedding reads these)."""
        return self.model.embed_tokens(input_ids)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> float32 logits [N, vocab]."""
        return self.lm_head(hidden).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors; raises ValueError on unknown names or missing parameters."""
        loader = WeightLoader(self)
        for name, tensor in weights:
            if is_ignored(name):
                continue
            if name == "lm_head.weight" and self.tie_word_embeddings:
                continue  # the tied embedding is loaded under its own name
            for hf_part, (fused, shard) in self.stacked_params.items():
                if hf_part in name:
                    loader.copy(name.replace(hf_part, fused), tensor, src_name=name,
                                shard_id=shard)
                    break
            else:
                loader.copy(name, tensor)
        loader.finish()


MistralForCausalLM = LlamaForCausalLM
Qwen2ForCausalLM = LlamaForCausalLM
