"""Fused mixture-of-experts MLP: tokens grouped by expert, two grouped GEMMs, weighted reduce.

Computes what `gpu_kernels/fused_moe_ref.py` computes (out[t] = sum_k w[t,k] * expert_{ids[t,k]}(x[t])
with a SiLU-gated expert MLP) without a Python loop over experts, following the grouped-GEMM
scheme of vLLM's / SGLang's fused_moe:

1. `moe_align_block_size`: the T*K (token, choice) pairs are sorted by expert and each expert's
   run is padded to a multiple of BLOCK_M, so every BLOCK_M-row tile of the sorted order belongs
   to one expert (`expert_ids[tile]`); padding rows hold the sentinel T*K. Experts without tokens
   get no tiles. All on the device, no host synchronisation (the tile count is an upper bound).
2. `_moe_gate_up_kernel`: per (tile, column block of I) a GEMM of the gathered token rows with
   the expert's gate and up rows of `w13` [E, 2I, H] (two accumulators), then silu(gate) * up:
   the intermediate [T*K, I] is written once, already activated.
3. `_moe_down_kernel`: per (tile, column block of H) the intermediate times the expert's `w2`
   [E, H, I], scaled by the pair's routing weight in the epilogue, written to [T*K, H].
4. The weighted rows of each token are summed over K (one torch reduction).

Accumulation is in float32; outputs are rounded to x's dtype.
"""
from __future__ import annotations

from typing import Optional

import torch

from gpu_kernels._triton_utils import (FLOAT_DTYPES, cdiv, check_dtype, interpreting, require_triton,
                                   tl, triton)

if triton is not None:
    from gpu_kernels._triton_utils import round_to

    @triton.jit
    def _moe_gate_up_kernel(x_ptr, w_ptr, out_ptr, sorted_ptr, expert_ptr, num_padded_ptr,
                            num_pairs, top_k, hidden, inter,
                            stride_xm, stride_we, stride_wn, stride_om,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_K: tl.constexpr, UPCAST: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
            return
        expert = tl.load(expert_ptr + pid_m).to(tl.int64)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        pair = tl.load(sorted_ptr + rows)
        row_ok = pair < num_pairs
        token = (pair // top_k).to(tl.int64)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < inter
        ks = tl.arange(0, BLOCK_K)
        w_base = w_ptr + expert * stride_we
        acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, hidden, BLOCK_K):
            k_ok = (k0 + ks) < hidden
            a = tl.load(x_ptr + token[:, None] * stride_xm + (k0 + ks)[None, :],
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w_mask = k_ok[:, None] & col_ok[None, :]
            # [BLOCK_K, BLOCK_N] views of the gate rows and of the up rows (I rows further).
            w_gate = tl.load(w_base + cols[None, :].to(tl.int64) * stride_wn
                             + (k0 + ks)[:, None], mask=w_mask, other=0.0)
            w_up = tl.load(w_base + (cols + inter)[None, :].to(tl.int64) * stride_wn
                           + (k0 + ks)[:, None], mask=w_mask, other=0.0)
            if UPCAST:
                a, w_gate, w_up = a.to(tl.float32), w_gate.to(tl.float32), w_up.to(tl.float32)
            acc_gate = tl.dot(a, w_gate, acc_gate)
            acc_up = tl.dot(a, w_up, acc_up)
        act = acc_gate / (1.0 + tl.exp(-acc_gate)) * acc_up
        dt = out_ptr.dtype.element_ty
        tl.store(out_ptr + pair[:, None].to(tl.int64) * stride_om + cols[None, :],
                 round_to(act, dt).to(dt),
                 mask=row_ok[:, None] & col_ok[None, :])

    @triton.jit
    def _moe_down_kernel(a_ptr, w_ptr, out_ptr, weight_ptr, sorted_ptr, expert_ptr,
                         num_padded_ptr, num_pairs, hidden, inter,
                         stride_am, stride_we, stride_wn, stride_om,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         UPCAST: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
            return
        expert = tl.load(expert_ptr + pid_m).to(tl.int64)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        pair = tl.load(sorted_ptr + rows)
        row_ok = pair < num_pairs
        pair64 = pair.to(tl.int64)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < hidden
        ks = tl.arange(0, BLOCK_K)
        w_base = w_ptr + expert * stride_we
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, inter, BLOCK_K):
            k_ok = (k0 + ks) < inter
            a = tl.load(a_ptr + pair64[:, None] * stride_am + (k0 + ks)[None, :],
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_base + cols[None, :].to(tl.int64) * stride_wn + (k0 + ks)[:, None],
                        mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            if UPCAST:
                a, w = a.to(tl.float32), w.to(tl.float32)
            acc = tl.dot(a, w, acc)
        route_w = tl.load(weight_ptr + pair64, mask=row_ok, other=0.0).to(tl.float32)
        acc = acc * route_w[:, None]
        dt = out_ptr.dtype.element_ty
        tl.store(out_ptr + pair64[:, None] * stride_om + cols[None, :], round_to(acc, dt).to(dt),
                 mask=row_ok[:, None] & col_ok[None, :])


def moe_align_block_size(topk_ids: torch.Tensor, num_experts: int,
                         block_m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group the flattened (token, choice) pairs by expert in BLOCK_M-aligned runs.

    Returns `sorted_ids` [P] int32 (pair indices, sentinel T*K in padding rows), `expert_ids`
    [P // block_m] int32 (the expert of each tile; -1 past the last used tile) and
    `num_padded` [1] int32 (rows in use). P = T*K + E*(block_m - 1) is an upper bound, so no
    value has to come back to the host.
    """
    flat = topk_ids.reshape(-1).to(torch.int64)
    num_pairs = flat.numel()
    dev = flat.device
    # scatter_add, not bincount: bincount sizes its output on the host (a sync on CUDA).
    counts = torch.zeros(num_experts, dtype=torch.int64, device=dev).scatter_add_(
        0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = torch.cumsum(padded, 0)
    padded_start = padded_end - padded
    order = torch.argsort(flat, stable=True)
    start = torch.cumsum(counts, 0) - counts  # first sorted position of each expert
    rank = torch.arange(num_pairs, device=dev) - start[flat[order]]
    dest = padded_start[flat[order]] + rank
    cap = num_pairs + num_experts * (block_m - 1)
    cap = cdiv(cap, block_m) * block_m
    sorted_ids = torch.full((cap,), num_pairs, dtype=torch.int32, device=dev)
    sorted_ids[dest] = order.to(torch.int32)
    tile_start = torch.arange(0, cap, block_m, device=dev)
    expert_ids = torch.searchsorted(padded_end, tile_start, right=True)
    expert_ids = torch.where(expert_ids < num_experts, expert_ids, -1).to(torch.int32)
    num_padded = padded_end[-1:].to(torch.int32)
    return sorted_ids, expert_ids, num_padded


def _block_m(num_pairs: int, num_experts: int) -> int:
    # Few pairs per expert (decode): small tiles waste less padding; prefill: larger tiles.
    per_expert = num_pairs / max(num_experts, 1)
    return 16 if per_expert <= 16 else 32 if per_expert <= 64 else 64


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, block_m: Optional[int] = None) -> torch.Tensor:
    """x [T, H], w13 [E, 2I, H], w2 [E, H, I], topk_weights/topk_ids [T, K] -> [T, H]."""
    require_triton(x, w13, w2, topk_weights, topk_ids)
    check_dtype("x", x, FLOAT_DTYPES)
    if x.dim() != 2 or w13.dim() != 3 or w2.dim() != 3:
        raise ValueError(f"x must be [T, H] and w13/w2 [E, ., .]; got {tuple(x.shape)}, "
                         f"{tuple(w13.shape)}, {tuple(w2.shape)}")
    t, h = x.shape
    e, two_i, h13 = w13.shape
    inter = two_i // 2
    if h13 != h or two_i % 2 or tuple(w2.shape) != (e, h, inter):
        raise ValueError(f"w13 {tuple(w13.shape)} / w2 {tuple(w2.shape)} do not fit x "
                         f"{tuple(x.shape)}: need w13 [E, 2I, {h}] and w2 [E, {h}, I]")
    if w13.dtype != x.dtype or w2.dtype != x.dtype:
        raise TypeError(f"weights ({w13.dtype}, {w2.dtype}) must have x's dtype {x.dtype}")
    if topk_ids.shape != topk_weights.shape or topk_ids.dim() != 2 or topk_ids.shape[0] != t:
        raise ValueError(f"topk_ids {tuple(topk_ids.shape)} and topk_weights "
                         f"{tuple(topk_weights.shape)} must both be [{t}, K]")
    for name, w in (("w13", w13), ("w2", w2)):
        if w.stride(-1) != 1:
            raise ValueError(f"{name}: last dimension must be contiguous")
    x = x.contiguous()
    k = topk_ids.shape[1]
    out = torch.empty(t, h, dtype=x.dtype, device=x.device)
    if t == 0:
        return out
    num_pairs = t * k
    bm = block_m or _block_m(num_pairs, e)
    sorted_ids, expert_ids, num_padded = moe_align_block_size(topk_ids, e, bm)
    tiles = expert_ids.numel()
    # The CPU interpreter's dot mishandles half-precision operands: widen them there only.
    upcast = interpreting() and x.dtype != torch.float32
    inter_out = torch.empty(num_pairs, inter, dtype=x.dtype, device=x.device)
    bn_i = max(16, min(64, triton.next_power_of_2(inter)))
    bk_h = max(16, min(64, triton.next_power_of_2(h)))
    _moe_gate_up_kernel[(tiles, cdiv(inter, bn_i))](
        x, w13, inter_out, sorted_ids, expert_ids, num_padded, num_pairs, k, h, inter,
        x.stride(0), w13.stride(0), w13.stride(1), inter_out.stride(0),
        BLOCK_M=bm, BLOCK_N=bn_i, BLOCK_K=bk_h, UPCAST=upcast)
    down = torch.empty(num_pairs, h, dtype=x.dtype, device=x.device)
    bn_h = max(16, min(64, triton.next_power_of_2(h)))
    bk_i = max(16, min(64, triton.next_power_of_2(inter)))
    weights = topk_weights.reshape(-1).contiguous()
    _moe_down_kernel[(tiles, cdiv(h, bn_h))](
        inter_out, w2, down, weights, sorted_ids, expert_ids, num_padded, num_pairs, h, inter,
        inter_out.stride(0), w2.stride(0), w2.stride(1), down.stride(0),
        BLOCK_M=bm, BLOCK_N=bn_h, BLOCK_K=bk_i, UPCAST=upcast)
    torch.sum(down.view(t, k, h), dim=1, out=out)
    return out
