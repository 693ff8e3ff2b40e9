"""Paged attention for prefill and chunked prefill: packed variable-length queries.

Sequence s owns query rows `query_start_loc[s]:query_start_loc[s+1]` (its q_len newest tokens)
and a context of `seq_lens[s]` tokens whose K/V (the cached prefix and the new tokens, already
written) sit in the paged cache `[num_blocks, block_size, KVH, D]` at the blocks of
`block_tables[s]`. Query j sits at position `ctx + j` with `ctx = seq_len - q_len` and attends to
every key at or before it: fully over the cached prefix, causally among the new tokens,
optionally only within the last `sliding_window` positions. With `softcap` (Gemma 2) scaled
scores become `softcap * tanh(score / softcap)` before the softmax.

Algorithm: FlashAttention-2 (Dao, 2023) forward pass: one program per (query head, sequence,
BLOCK_M query tile), K/V streamed in BLOCK_N tiles read through the block table, online softmax
in base 2 with the scale folded into the exponent, both products on the tensor cores (`tl.dot`).
The key range is cut in two loops: the tiles every query of the tile sees (no mask), then the
tiles around the diagonal (causal mask). Tiles are launched heaviest first (last query tile
first) so that the causal triangle balances across the GPU.

The pure-torch reference is `kernels.paged_attention_ref.paged_attention_ref`, re-exported here as
`prefill_attention_ref`.
"""
from __future__ import annotations

from typing import Optional

import torch

from gpu_kernels._triton_utils import (cdiv, next_pow2, output_like, require_triton, same_device, tl,
                                   triton)
from gpu_kernels.paged_attention import LOG2E, _check_cache
if triton is not None:
    from gpu_kernels.paged_attention import softcap_log2
from gpu_kernels.paged_attention_ref import paged_attention_ref

prefill_attention_ref = paged_attention_ref


if triton is not None:

    @triton.jit
    def _prefill_tiles(acc, l_i, m_i, q, k_cache, v_cache, bt_row, kvh, lo, hi, q_pos, seq_len,
                       scale_log2, window, cap_log2, stride_kb, stride_ks, stride_kh,
                       stride_vb, stride_vs, stride_vh,
                       HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                       BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, USE_WINDOW: tl.constexpr,
                       USE_SOFTCAP: tl.constexpr):
        """Fold keys [lo, hi) into the running (acc, l, m) of one query tile.

        `lo` is a multiple of BLOCK_N, so without CAUSAL the range is whole tiles and nothing
        is masked. Each key row is gathered through its block-table entry (a block-shaped
        gather and reshape measured 2x slower on an H200).
        """
        offs_d = tl.arange(0, D_PAD)
        for n0 in range(lo, hi, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            if CAUSAL:
                n_mask = offs_n < hi
                blk = tl.load(bt_row + offs_n // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
            else:
                blk = tl.load(bt_row + offs_n // BLOCK_SIZE).to(tl.int64)
            in_blk = offs_n % BLOCK_SIZE
            row_k = blk * stride_kb + in_blk * stride_ks + kvh * stride_kh
            row_v = blk * stride_vb + in_blk * stride_vs + kvh * stride_vh
            if CAUSAL:
                kv_mask = n_mask[:, None] & (offs_d[None, :] < HEAD_DIM)
                k = tl.load(k_cache + row_k[:, None] + offs_d[None, :], mask=kv_mask,
                            other=0.0).to(q.dtype)  # widens an fp8 cache (scale 1.0)
            elif D_PAD != HEAD_DIM:
                kv_mask = offs_d[None, :] < HEAD_DIM
                k = tl.load(k_cache + row_k[:, None] + offs_d[None, :], mask=kv_mask,
                            other=0.0).to(q.dtype)  # widens an fp8 cache (scale 1.0)
            else:
                k = tl.load(k_cache + row_k[:, None] + offs_d[None, :]).to(q.dtype)
            # Scores stay unscaled; the scale rides in the exponent's multiply-add (soft-capped
            # scores are capped in the log2 domain instead, and carry their scale).
            qk = tl.dot(q, tl.trans(k))
            if USE_SOFTCAP:
                qk = softcap_log2(qk * scale_log2, cap_log2)
                mult = 1.0
            else:
                mult = scale_log2
            if CAUSAL:
                keep = (offs_n[None, :] <= q_pos[:, None]) & n_mask[None, :]
                if USE_WINDOW:
                    keep = keep & (offs_n[None, :] > q_pos[:, None] - window)
                qk = tl.where(keep, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1) * mult)
            if USE_WINDOW:  # a row may see nothing in this tile yet: keep exp2 away from NaN
                m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(qk * mult - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            if CAUSAL or D_PAD != HEAD_DIM:
                v = tl.load(v_cache + row_v[:, None] + offs_d[None, :], mask=kv_mask,
                            other=0.0).to(q.dtype)
            else:
                v = tl.load(v_cache + row_v[:, None] + offs_d[None, :]).to(q.dtype)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        return acc, l_i, m_i

    # Per-step values (tile count, block-table width, window) and sliced metadata pointers are
    # not specialised on: one compiled variant per tile configuration serves every step.
    @triton.jit(do_not_specialize=["window", "num_m_tiles", "stride_bt", "cap_log2"],
                do_not_specialize_on_alignment=["block_tables", "seq_lens", "query_start_loc"])
    def _prefill_kernel(
        q_ptr, k_cache, v_cache, block_tables, seq_lens, query_start_loc, out_ptr,
        scale_log2, window, num_m_tiles, cap_log2,
        stride_qt, stride_qh,
        stride_kb, stride_ks, stride_kh,
        stride_vb, stride_vs, stride_vh,
        stride_bt, stride_ot, stride_oh,
        HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, GROUP: tl.constexpr,
        BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        USE_WINDOW: tl.constexpr, USE_SOFTCAP: tl.constexpr,
    ):
        """One (query head, sequence, query tile); the grid runs the last tiles first."""
        head = tl.program_id(0)
        seq = tl.program_id(1)
        tile = num_m_tiles - 1 - tl.program_id(2)
        q_start = tl.load(query_start_loc + seq)
        q_len = tl.load(query_start_loc + seq + 1) - q_start
        m0 = tile * BLOCK_M
        if m0 >= q_len:
            return
        seq_len = tl.load(seq_lens + seq)
        ctx = seq_len - q_len
        kvh = head // GROUP

        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D_PAD)
        m_mask = offs_m < q_len
        qd_mask = m_mask[:, None]
        if D_PAD != HEAD_DIM:
            qd_mask = qd_mask & (offs_d[None, :] < HEAD_DIM)
        rows = (q_start + offs_m).to(tl.int64)
        q = tl.load(q_ptr + rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                    mask=qd_mask, other=0.0)
        q_pos = ctx + offs_m

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
        bt_row = block_tables + seq.to(tl.int64) * stride_bt

        # Keys before the tile's first query position are seen by all its rows.
        first = ctx + m0
        full_end = (first // BLOCK_N) * BLOCK_N
        lo = 0
        if USE_WINDOW:
            lo = tl.maximum(first - window + 1, 0)
            lo = (lo // BLOCK_N) * BLOCK_N
            full_end = tl.maximum(full_end, lo)
        acc, l_i, m_i = _prefill_tiles(
            acc, l_i, m_i, q, k_cache, v_cache, bt_row, kvh, lo, full_end, q_pos, seq_len,
            scale_log2, window, cap_log2, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs,
            stride_vh, HEAD_DIM, D_PAD, BLOCK_SIZE, BLOCK_N, USE_WINDOW, USE_WINDOW, USE_SOFTCAP)
        diag_end = tl.minimum(first + BLOCK_M, seq_len)
        acc, l_i, m_i = _prefill_tiles(
            acc, l_i, m_i, q, k_cache, v_cache, bt_row, kvh, full_end, diag_end, q_pos, seq_len,
            scale_log2, window, cap_log2, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs,
            stride_vh, HEAD_DIM, D_PAD, BLOCK_SIZE, BLOCK_N, True, USE_WINDOW, USE_SOFTCAP)

        l_safe = tl.where(l_i > 0.0, l_i, 1.0)
        o = acc / l_safe[:, None]
        tl.store(out_ptr + rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=qd_mask)


def _default_config(max_query_len: int, d_pad: int, device: torch.device) -> dict[str, int]:
    """Tile sizes. Long prompts: 128x32 tiles, 4 warps, 3 stages (best of 12 configurations at
    8 x 2048, 32/8 heads, d=128 bf16 on an H200; see benchmarks/kernel_bench/NOTES.md)."""
    if max_query_len <= 16:
        return dict(block_m=16, block_n=64 if d_pad <= 128 else 32, num_warps=4, num_stages=2)
    if max_query_len <= 64:
        return dict(block_m=64, block_n=64 if d_pad <= 128 else 32, num_warps=4, num_stages=2)
    if d_pad > 128:
        return dict(block_m=64, block_n=32, num_warps=4, num_stages=2)
    return dict(block_m=128, block_n=32, num_warps=4, num_stages=3)


def prefill_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                      block_tables: torch.Tensor, seq_lens: torch.Tensor,
                      query_start_loc: torch.Tensor, scale: float, max_query_len: int,
                      sliding_window: Optional[int] = None, out: Optional[torch.Tensor] = None,
                      num_query_tokens: Optional[int] = None,
                      config: Optional[dict[str, int]] = None,
                      softcap: Optional[float] = None) -> torch.Tensor:
    """Varlen causal attention over the paged cache. Returns out [T, H, D].

    `max_query_len` bounds the per-sequence query counts (host int). Rows past
    `num_query_tokens` (default `query_start_loc[-1]`, read with one device sync) are padding
    and are zeroed. `config` overrides tile sizes (block_m, block_n, num_warps, num_stages).
    """
    require_triton(query, key_cache, value_cache)
    same_device(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc)
    _check_cache(query, key_cache, value_cache)
    num_tokens, heads, head_dim = query.shape
    _, block_size, kv_heads, _ = key_cache.shape
    num_seqs = block_tables.shape[0]
    if seq_lens.shape[0] != num_seqs or query_start_loc.shape[0] != num_seqs + 1:
        raise ValueError(f"{num_seqs} block-table rows, {seq_lens.shape[0]} seq_lens, "
                         f"{query_start_loc.shape[0]} query_start_loc entries")
    for name, t in (("block_tables", block_tables), ("seq_lens", seq_lens),
                    ("query_start_loc", query_start_loc)):
        if t.dtype != torch.int32:
            raise TypeError(f"{name} must be int32, got {t.dtype}")
    if block_tables.stride(1) != 1:
        raise ValueError("block_tables rows must be contiguous")
    out = output_like(out, query)
    if num_query_tokens is None:
        num_query_tokens = int(query_start_loc[-1].item()) if num_seqs else 0
    if num_tokens > num_query_tokens:
        out[num_query_tokens:].zero_()
    if num_seqs == 0 or max_query_len <= 0:
        return out

    d_pad = next_pow2(head_dim)
    cfg = dict(_default_config(max_query_len, d_pad, query.device), **(config or {}))
    block_n = max(cfg["block_n"], block_size)
    num_m_tiles = cdiv(max_query_len, cfg["block_m"])
    use_window = sliding_window is not None and sliding_window > 0
    grid = (heads, num_seqs, num_m_tiles)
    _prefill_kernel[grid](
        query, key_cache, value_cache, block_tables, seq_lens, query_start_loc, out,
        float(scale) * LOG2E, int(sliding_window) if use_window else 0, num_m_tiles,
        float(softcap) * LOG2E if softcap else 1.0,
        query.stride(0), query.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, D_PAD=d_pad, GROUP=heads // kv_heads, BLOCK_SIZE=block_size,
        BLOCK_M=cfg["block_m"], BLOCK_N=block_n, USE_WINDOW=use_window,
        USE_SOFTCAP=bool(softcap), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out
