"""OPT (OPTForCausalLM) over flat token rows, HF module names.

Learned positions are offset by 2 (index = position + 2, as fairseq reserved two rows); models whose
`word_embed_proj_dim` differs from `hidden_size` project in and out (350m); `do_layer_norm_before`
False puts the layer norms after each residual add (350m). Hub checkpoints that name weights
`decoder.*` (no `model.` prefix) load too.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
from torch import nn

from engine.attention.metadata import AttentionMetadata
from engine.distributed.parallel_state import heads_per_rank
from engine.layers.activation import Activation
from engine.layers.attention import Attention
from engine.layers.linear import ColumnParallelLinear, ReplicatedLinear, RowParallelLinear
from engine.layers.vocab_parallel import ParallelLMHead, VocabParallelEmbedding
from engine.models.utils import WeightLoader, is_ignored
from engine.quantization.base import QuantizationConfig

POSITION_OFFSET = 2


class OPTAttention(nn.Module):
    def __init__(self, config: Any, quant_config: Optional[QuantizationConfig], prefix: str):
        super().__init__()
        hidden, bias = config.hidden_size, getattr(config, "enable_bias", True)
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // self.num_heads
        self.scaling = self.head_dim ** -0.5
        q = quant_config
        self.q_proj = ColumnParallelLinear(hidden, hidden, bias, q, f"{prefix}.q_proj")
        self.k_proj = ColumnParallelLinear(hidden, hidden, bias, q, f"{prefix}.k_proj")
        self.v_proj = ColumnParallelLinear(hidden, hidden, bias, q, f"{prefix}.v_proj")
        self.out_proj = RowParallelLinear(hidden, hidden, bias, q, f"{prefix}.out_proj")
        # HF scales q before the product (original fairseq order), so attention's scale is 1.
        self.attn = Attention(heads_per_rank(self.num_heads), self.head_dim, 1.0)

    def forward(self, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        q = self.q_proj(x) * self.scaling
        return self.out_proj(self.attn(q, self.k_proj(x), self.v_proj(x), meta))


class OPTDecoderLayer(nn.Module):
    def __init__(self, config: Any, quant_config: Optional[QuantizationConfig], prefix: str):
        super().__init__()
        hidden, bias = config.hidden_size, getattr(config, "enable_bias", True)
        affine = getattr(config, "layer_norm_elementwise_affine", True)
        self.do_layer_norm_before = config.do_layer_norm_before
        self.self_attn = OPTAttention(config, quant_config, f"{prefix}.self_attn")
        self.self_attn_layer_norm = nn.LayerNorm(hidden, elementwise_affine=affine)
        self.fc1 = ColumnParallelLinear(hidden, config.ffn_dim, bias, quant_config, f"{prefix}.fc1")
        self.fc2 = RowParallelLinear(config.ffn_dim, hidden, bias, quant_config, f"{prefix}.fc2")
        self.activation_fn = Activation(config.activation_function)
        self.final_layer_norm = nn.LayerNorm(hidden, elementwise_affine=affine)

    def forward(self, x: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        pre = self.do_layer_norm_before
        h = self.self_attn(self.self_attn_layer_norm(x) if pre else x, meta)
        x = x + h
        if not pre:
            x = self.self_attn_layer_norm(x)
        h = self.fc2(self.activation_fn(self.fc1(self.final_layer_norm(x) if pre else x)))
        x = x + h
        return x if pre else self.final_layer_norm(x)


class OPTDecoder(nn.Module):
    def __init__(self, config: Any, quant_config: Optional[QuantizationConfig]):
        super().__init__()
        hidden, proj = config.hidden_size, config.word_embed_proj_dim
        affine = getattr(config, "layer_norm_elementwise_affine", True)
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, proj)
        self.embed_positions = nn.Embedding(config.max_position_embeddings + POSITION_OFFSET, hidden)
        self.project_in = (ReplicatedLinear(proj, hidden, False, prefix="model.decoder.project_in")
                           if proj != hidden else None)
        self.project_out = (ReplicatedLinear(hidden, proj, False,
                                             prefix="model.decoder.project_out")
                            if proj != hidden else None)
        keep_final = config.do_layer_norm_before and not getattr(config, "_remove_final_layer_norm",
                                                                 False)
        self.final_layer_norm = nn.LayerNorm(hidden, elementwise_affine=affine) if keep_final else None
        self.layers = nn.ModuleList(OPTDecoderLayer(config, quant_config, f"model.decoder.layers.{i}")
                                    for i in range(config.num_hidden_layers))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        if self.project_in is not None:
            x = self.project_in(x)
        x = x + self.embed_positions(positions + POSITION_OFFSET)
        for layer in self.layers:
            x = layer(x, meta)
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        if self.project_out is not None:
            x = self.project_out(x)
        return x


class OPTModel(nn.Module):
    def __init__(self, config: Any, quant_config: Optional[QuantizationConfig]):
        super().__init__()
        self.decoder = OPTDecoder(config, quant_config)


class OPTForCausalLM(nn.Module):
    """OPT causal LM; the LM head (word_embed_proj_dim -> vocab) is tied to the embedding."""

    supports_quantization = True

    def __init__(self, hf_config: Any, quant_config: Optional[QuantizationConfig] = None):
        super().__init__()
        self.config = hf_config
        self.model = OPTModel(hf_config, quant_config)
        self.lm_head = ParallelLMHead(hf_config.vocab_size, hf_config.word_embed_proj_dim)
        self.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", True))
        if self.tie_word_embeddings:
            self.lm_head.tie(self.model.decoder.embed_tokens)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions [T] -> final hidden states [T, word_embed_proj_dim]."""
        return self.model.decoder(input_ids, positions, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, word_embed_proj_dim] -> float32 logits [N, vocab]."""
        return self.lm_head(hidden).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load HF-named tensors; raises ValueError on unknown names or missing parameters."""
        loader = WeightLoader(self)
        for name, tensor in weights:
            if is_ignored(name):
                continue
            if name.startswith("decoder."):
                name = "model." + name
            if name == "lm_head.weight" and self.tie_word_embeddings:
                continue
            loader.copy(name, tensor)
        loader.finish()
