"""Pure-torch mixture-of-experts reference: route, run each expert on its tokens, weighted sum.

`x` [T, H] tokens, `w13` [E, 2I, H] each expert's stacked [gate | up] projection, `w2` [E, H, I]
its down projection, `topk_ids` / `topk_weights` [T, K] each token's experts and their weights.
out[t] = sum_k topk_weights[t, k] * w2[e] @ (silu(w13[e, :I] @ x[t]) * (w13[e, I:] @ x[t])),
e = topk_ids[t, k]. This is the CPU engine's MoE and the ground truth of gpu_kernels/fused_moe.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def select_experts(router_logits: torch.Tensor, top_k: int,
                   renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax routing in float32: (topk_weights [T, K] float32, topk_ids [T, K] int64).

    With `renormalize` the K chosen weights are rescaled to sum to one (Mixtral, Qwen3-MoE with
    norm_topk_prob), as HF computes it.
    """
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def fused_moe_ref(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                  topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    """x [T, H] -> [T, H] in x's dtype (per-expert loop over the tokens routed to it)."""
    t, h = x.shape
    inter = w2.shape[-1]
    out = torch.zeros(t, h, dtype=torch.float32, device=x.device)
    weights = topk_weights.to(x.dtype)
    for e in torch.unique(topk_ids).tolist():
        tok, slot = torch.nonzero(topk_ids == e, as_tuple=True)
        xe = x[tok]
        gate_up = F.linear(xe, w13[e])
        act = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]
        y = F.linear(act, w2[e]) * weights[tok, slot, None]
        out.index_add_(0, tok, y.float())
    return out.to(x.dtype)
