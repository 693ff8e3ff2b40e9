"""GPT-2 (GPT2LMHeadModel) over flat token rows, HF module names.

HF stores GPT-2's projections as `Conv1D` with weight `[in, out]`; our linear layers hold
`[out, in]`, so those dense weights are transposed on load. `c_attn`'s fused tensors are split
into q/k/v shards along the output dim so the qkv layer places (and could shard) each. Checkpoints saved without the `transformer.` prefix (the
original hub files) are accepted too.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
from torch import nn

from engine.attention.metadata import AttentionMetadata
from engine.distributed.parallel_state import heads_per_rank
from engine.layers.activation import Activation
from engine.layers.attention import Attention
from engine.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from engine.layers.vocab_parallel import ParallelLMHead, VocabParallelEmbedding
from engine.models.utils import WeightLoader, is_ignored
from engine.quantization.base import QuantizationConfig

_CONV1D = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")


class GPT2Attention(nn.Module):
    def __init__(self, config: Any, layer_idx: int, quant_config: Optional[QuantizationConfig],
                 prefix: str):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // self.num_heads
        scale = self.head_dim ** -0.5 if getattr(config, "scale_attn_weights", True) else 1.0
        if getattr(config, "scale_attn_by_inverse_layer_idx", False):
            scale /= float(layer_idx + 1)
        self.c_attn = QKVParallelLinear(hidden, self.head_dim, self.num_heads, self.num_heads,
                                        quant_config=quant_config,
                                        prefixes=[f"{prefix}.c_attn"] * 3)  # rows: [q | k | v]
        self.c_proj = RowParallelLinear(hidden, hidden, quant_config=quant_config,
                                        prefix=f"{prefix}.c_proj")
        self.attn = Attention(heads_per_rank(self.num_heads), self.head_dim, scale)

    def forward(self, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.c_attn(x).chunk(3, dim=-1)
        return self.c_proj(self.attn(q, k, v, meta))


class GPT2MLP(nn.Module):
    def __init__(self, config: Any, quant_config: Optional[QuantizationConfig], prefix: str):
        super().__init__()
        inner = getattr(config, "n_inner", None) or 4 * config.hidden_size
        self.c_fc = ColumnParallelLinear(config.hidden_size, inner, quant_config=quant_config,
                                         prefix=f"{prefix}.c_fc")
        self.c_proj = RowParallelLinear(inner, config.hidden_size, quant_config=quant_config,
                                        prefix=f"{prefix}.c_proj")
        self.act = Activation(config.activation_function)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, config: Any, layer_idx: int, quant_config: Optional[QuantizationConfig],
                 prefix: str):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.attn = GPT2Attention(config, layer_idx, quant_config, f"{prefix}.attn")
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.mlp = GPT2MLP(config, quant_config, f"{prefix}.mlp")

    def forward(self, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), meta)
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    def __init__(self, config: Any, quant_config: Optional[QuantizationConfig]):
        super().__init__()
        self.wte = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.h = nn.ModuleList(GPT2Block(config, i, quant_config, f"transformer.h.{i}")
                               for i in range(config.num_hidden_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        x = self.wte(input_ids) + self.wpe(positions)
        for block in self.h:
            x = block(x, meta)
        return self.ln_f(x)


class GPT2LMHeadModel(nn.Module):
    """GPT-2 causal LM; the LM head is tied to `wte` unless the config says otherwise."""

    supports_quantization = True

    def __init__(self, hf_config: Any, quant_config: Optional[QuantizationConfig] = None):
        super().__init__()
        self.config = hf_config
        self.transformer = GPT2Model(hf_config, quant_config)
        self.lm_head = ParallelLMHead(hf_config.vocab_size, hf_config.hidden_size)
        self.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", True))
        if self.tie_word_embeddings:
            self.lm_head.tie(self.transformer.wte)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions [T] -> final hidden states [T, hidden]."""
        return self.transformer(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> float32 logits [N, vocab]."""
        return self.lm_head(hidden).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors (Conv1D weights transposed); raises on unknown/missing names."""
        loader = WeightLoader(self)
        for name, tensor in weights:
            if is_ignored(name):
                continue
            if not name.startswith(("transformer.", "lm_head.")):
                name = "transformer." + name
            if name == "lm_head.weight" and self.tie_word_embeddings:
                continue
            if name.endswith(_CONV1D):
                tensor = tensor.t()
            if ".c_attn." in name:
                self._load_qkv(loader, name, tensor)
            else:
                loader.copy(name, tensor)
        loader.finish()

    @staticmethod
    def _load_qkv(loader: WeightLoader, name: str, tensor: torch.Tensor) -> None:
        """c_attn's [q | k | v] tensor as three shards (whole to each when it has no output dim)."""
        if name not in loader:
            raise ValueError(f"checkpoint weight '{name}' does not match any model parameter")
        out_dim = getattr(loader.params[name], "output_dim", None)
        parts = tensor.chunk(3, dim=out_dim) if out_dim is not None else [tensor] * 3
        for shard, part in zip("qkv", parts):
            loader.copy(name, part, shard_id=shard)
