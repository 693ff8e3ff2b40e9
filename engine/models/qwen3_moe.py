"""Qwen3-MoE and Qwen2-MoE: the Qwen decoder with sparse mixture-of-experts MLPs.

A layer is sparse when it is not in `mlp_only_layers` and (index + 1) is a multiple of
`decoder_sparse_step`; other layers keep a dense MLP of `intermediate_size`. Experts have
`moe_intermediate_size`; routing is a top-k softmax, renormalised when `norm_topk_prob`.
Qwen3-MoE adds q/k RMSNorm; Qwen2-MoE has q/k/v biases and a shared expert whose output is
gated by sigmoid(`shared_expert_gate`(x)) and added to the routed experts'.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.layers.fused_moe import MOE_QUANT_LIMITATION, SparseMoeBlock, expert_weight_target
from engine.layers.linear import ReplicatedLinear
from engine.models.qwen3 import Qwen3ForCausalLM, Qwen3MLP


def is_sparse_layer(config: Any, layer_idx: int) -> bool:
    step = getattr(config, "decoder_sparse_step", 1) or 1
    return (layer_idx not in (getattr(config, "mlp_only_layers", None) or [])
            and config.num_experts > 0 and (layer_idx + 1) % step == 0)

class Qwen2MoeSparseMoeBlock(SparseMoeBlock):
    """Routed experts plus a sigmoid-gated shared expert (HF module names)."""

    def __init__(self, config: Any):
        super().__init__(config.hidden_size, config.num_experts, config.num_experts_per_tok,
                         config.moe_intermediate_size, bool(config.norm_topk_prob))
        self.shared_expert = Qwen3MLP(config.hidden_size, config.shared_expert_intermediate_size,
                                      config.hidden_act)
        self.shared_expert_gate = ReplicatedLinear(config.hidden_size, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return super().forward(x) + shared

class Qwen3MoeForCausalLM(Qwen3ForCausalLM):
    qk_norm = True
    # Quantized experts would need quantized fused-MoE kernels: refused before loading.
    supports_quantization = False
    quantization_limitation = MOE_QUANT_LIMITATION

    def make_mlp(self, config: Any, layer_idx: int, quant_config=None) -> nn.Module:
        if not is_sparse_layer(config, layer_idx):
            return super().make_mlp(config, layer_idx, quant_config)
        return SparseMoeBlock(config.hidden_size, config.num_experts, config.num_experts_per_tok,
                              config.moe_intermediate_size, bool(config.norm_topk_prob))

    def expert_mapper(self):
        return expert_weight_target(self)

class Qwen2MoeForCausalLM(Qwen3MoeForCausalLM):
    qk_norm = False

    def qkv_bias(self, config: Any) -> bool:
        return bool(getattr(config, "qkv_bias", True))

    def o_bias(self, config: Any) -> bool:
        return False

    def make_mlp(self, config: Any, layer_idx: int, quant_config=None) -> nn.Module:
        if not is_sparse_layer(config, layer_idx):
            return Qwen3MLP(config.hidden_size, config.intermediate_size, config.hidden_act,
                            quant_config=quant_config, prefix=f"model.layers.{layer_idx}.mlp")
        return Qwen2MoeSparseMoeBlock(config)
