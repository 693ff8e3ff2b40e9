"""Mixtral (MixtralForCausalLM): the Llama-style decoder with a sparse mixture-of-experts block
(`block_sparse_moe`: router `gate`, top-k softmax weights renormalised to sum to one) in place of
the dense MLP. Expert weights load by name into stacked tensors (engine/layers/fused_moe.py)."""
from __future__ import annotations

from typing import Any

from torch import nn

from engine.layers.fused_moe import MOE_QUANT_LIMITATION, SparseMoeBlock, expert_weight_target
from engine.models.qwen3 import Qwen3ForCausalLM


class MixtralForCausalLM(Qwen3ForCausalLM):
    qk_norm = False
    mlp_name = "block_sparse_moe"
    # Quantized experts would need quantized fused-MoE kernels: refused before loading.
    supports_quantization = False
    quantization_limitation = MOE_QUANT_LIMITATION

    def make_mlp(self, config: Any, layer_idx: int, quant_config=None) -> nn.Module:
        return SparseMoeBlock(config.hidden_size, config.num_local_experts,
                              config.num_experts_per_tok, config.intermediate_size,
                              renormalize=True)

    def expert_mapper(self):
        return expert_weight_target(self)

    def load_weights(self, weights) -> None:
        # transformers 5.x names the block `mlp`; checkpoints (and 4.x) say `block_sparse_moe`.
        super().load_weights((n.replace(".mlp.", ".block_sparse_moe."), t) for n, t in weights)
