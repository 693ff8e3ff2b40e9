"""Mixture-of-experts MLP layer: a router plus every expert's weights stacked in two tensors.

`w13_weight` [E, 2I, H] holds each expert's [gate | up] rows and `w2_weight` [E, H, I] its down
projection, so one fused kernel (gpu_kernels/fused_moe.py) runs all experts; on the CPU and in fp32
the pure-torch reference runs instead. Under tensor parallelism the experts are replicated on
every rank (each computes the whole block on the replicated residual stream; no collective). `expert_weight_target` maps checkpoint names onto the
stacked tensors: per-expert names (Mixtral's `experts.{e}.w1/w2/w3`, Qwen's
`experts.{e}.gate_proj/up_proj/down_proj`) and transformers 5.x's already stacked
`experts.gate_up_proj` / `experts.down_proj`.
"""
from __future__ import annotations

import re
from typing import Callable, Optional

import torch
from torch import nn

from engine.layers.linear import ReplicatedLinear
from gpu_kernels.fused_moe_ref import fused_moe_ref, select_experts

# Per-expert checkpoint names -> (our stacked parameter, shard: 0 gate, 1 up, None whole).
_PER_EXPERT = re.compile(r"^(?P<prefix>.*\.experts)\.(?P<e>\d+)\."
                         r"(?P<proj>w1|w2|w3|gate_proj|up_proj|down_proj)\.weight$")
_PROJ = {"w1": ("w13_weight", 0), "gate_proj": ("w13_weight", 0), "w3": ("w13_weight", 1),
         "up_proj": ("w13_weight", 1), "w2": ("w2_weight", None), "down_proj": ("w2_weight", None)}
# Why the MoE models refuse quantized checkpoints (and `quantization=`), before loading.
MOE_QUANT_LIMITATION = ("quantized mixture-of-experts weights are not supported (the experts run "
                        "in the fused MoE layer, which has no quantized kernels); serve the dense "
                        "checkpoint")
_STACKED = {".experts.gate_up_proj": ".experts.w13_weight",
            ".experts.down_proj": ".experts.w2_weight"}


class FusedMoEExperts(nn.Module):
    """The stacked expert weights of one MoE layer (module name `experts`, as in HF)."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.num_experts = num_experts
        self.intermediate_size = intermediate_size
        self.w13_weight = nn.Parameter(torch.empty(num_experts, 2 * intermediate_size,
                                                   hidden_size))
        self.w2_weight = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))

    def forward(self, x: torch.Tensor, topk_weights: torch.Tensor,
                topk_ids: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and x.dtype != torch.float32:
            from gpu_kernels.fused_moe import fused_moe
            return fused_moe(x, self.w13_weight, self.w2_weight, topk_weights.to(x.dtype),
                             topk_ids)
        return fused_moe_ref(x, self.w13_weight, self.w2_weight, topk_weights, topk_ids)


class SparseMoeBlock(nn.Module):
    """Router (`gate`, no bias) + top-k softmax routing + the experts (HF module names)."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, intermediate_size: int,
                 renormalize: bool):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"num_experts_per_tok ({top_k}) must be in [1, {num_experts}]")
        self.top_k = top_k
        self.renormalize = renormalize
        self.gate = ReplicatedLinear(hidden_size, num_experts, bias=False)
        self.experts = FusedMoEExperts(num_experts, hidden_size, intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = select_experts(self.gate(x), self.top_k, self.renormalize)
        return self.experts(x, weights, ids)


def expert_weight_target(model: nn.Module) -> Callable[[str], Optional[tuple[str, tuple]]]:
    """A function: our parameter name -> (stacked parameter name, index) for expert weights, None
    for every other name. Per-expert gate/up rows are the first/second half of w13's rows."""
    params = dict(model.named_parameters())

    def target(name: str) -> Optional[tuple[str, tuple]]:
        for hf, ours in _STACKED.items():
            if name.endswith(hf):
                return name[:-len(hf)] + ours, (slice(None),)
        m = _PER_EXPERT.match(name)
        if m is None:
            return None
        param, shard = _PROJ[m.group("proj")]
        dst = f"{m.group('prefix')}.{param}"
        if dst not in params:
            return None  # reported as an unknown weight by the loader
        e = int(m.group("e"))
        if shard is None:
            return dst, (e,)
        inter = params[dst].shape[1] // 2
        return dst, (e, slice(shard * inter, (shard + 1) * inter))

    return target
