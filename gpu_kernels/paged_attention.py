"""Paged attention for decode: one query token per sequence, K/V read through the block table.

For sequence s, query head h (KV head h // G with G = H // KVH query heads per KV head):

    out[s, h] = softmax(scale * q[s, h] . K[s, kvh]^T) V[s, kvh]

over the sequence's context, K/V gathered row by row from `key_cache`/`value_cache`
(`[num_blocks, block_size, KVH, D]`) at slot `block_tables[s, t // block_size] * block_size +
t % block_size`. With a sliding window only the last `sliding_window` positions are attended.

Algorithm: flash-decoding (Dao et al., "Flash-Decoding for long-context inference", 2023) on top
of the online softmax of FlashAttention (Dao et al., 2022; Milakov & Gimelshein, 2018). One
program handles one (sequence, KV head, context split): the G query heads that share the KV head
are processed together as the rows of one `tl.dot`, so every K/V byte is loaded once. When the
batch alone cannot fill the GPU the context is cut into splits whose partial results (un-normalised
accumulator, running max and sum, in base 2) are merged by a second, small reduce kernel.

The pure-torch reference is `kernels.paged_attention_ref.paged_attention_ref`, re-exported here as
`paged_attention_decode_ref`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from gpu_kernels._triton_utils import (cdiv, check_dtype, check_last_dim_contiguous, interpreting,
                                   next_pow2, num_sms, output_like, require_triton, same_device,
                                   tl, triton)
from gpu_kernels.paged_attention_ref import paged_attention_ref

LOG2E = 1.4426950408889634
SUPPORTED_HEAD_SIZES = (64, 80, 96, 128, 256)
SUPPORTED_BLOCK_SIZES = (8, 16, 32)
_MIN_PARTITION = 256  # tokens per split: below this a split is mostly overhead
_MAX_PARTITION = 512  # tokens per split at most: balances ragged batches


if triton is not None:

    @triton.jit
    def _window_start(seq_len, window, USE_WINDOW: tl.constexpr):
        """First context position the newest token attends to (0 without a sliding window)."""
        if USE_WINDOW:
            return tl.maximum(seq_len - window, 0)
        return 0

    # Per-step values (window, partition, block-table width, partial strides) and sliced metadata
    # pointers are not specialised on: one compiled variant per SPLIT serves every step.
    @triton.jit
    def softcap_log2(s, cap_log2):
        """`cap * tanh(x / cap)` for scores `s = x * log2(e)` kept in the log2 domain
        (`cap_log2 = cap * log2(e)`); tanh(y) = 1 - 2 / (exp(2y) + 1), exact at both ends."""
        y2 = 2.0 * s / cap_log2  # 2y
        return cap_log2 * (1.0 - 2.0 / (tl.math.exp2(y2 * 1.4426950408889634) + 1.0))

    @triton.jit(do_not_specialize=["window", "partition", "stride_bt", "stride_pa_s", "stride_pa_h",
                                   "stride_pm_s", "stride_pm_h", "cap_log2"],
                do_not_specialize_on_alignment=["block_tables", "seq_lens"])
    def _decode_split_kernel(
        q_ptr, k_cache, v_cache, block_tables, seq_lens, out_ptr, part_acc, part_ml,
        scale_log2, window, partition, cap_log2,
        stride_qt, stride_qh,
        stride_kb, stride_ks, stride_kh,
        stride_vb, stride_vs, stride_vh,
        stride_bt, stride_ot, stride_oh,
        stride_pa_s, stride_pa_h, stride_pa_p,
        stride_pm_s, stride_pm_h, stride_pm_p,
        HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, GROUP: tl.constexpr, G_PAD: tl.constexpr,
        BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, USE_WINDOW: tl.constexpr,
        SPLIT: tl.constexpr, USE_SOFTCAP: tl.constexpr,
    ):
        """One (sequence, KV head, split): attend the G query heads to one context range."""
        seq = tl.program_id(0)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        seq_len = tl.load(seq_lens + seq)
        lo = _window_start(seq_len, window, USE_WINDOW)
        start = lo + split * partition
        end = tl.minimum(start + partition, seq_len)
        if SPLIT:
            if start >= seq_len:  # the reduce kernel never reads splits past the context
                return

        offs_g = tl.arange(0, G_PAD)
        offs_d = tl.arange(0, D_PAD)
        heads = kvh * GROUP + offs_g
        g_mask = offs_g < GROUP
        qd_mask = g_mask[:, None]
        if D_PAD != HEAD_DIM:
            qd_mask = qd_mask & (offs_d[None, :] < HEAD_DIM)
        q = tl.load(q_ptr + seq.to(tl.int64) * stride_qt + heads[:, None] * stride_qh
                    + offs_d[None, :], mask=qd_mask, other=0.0)

        m_i = tl.full([G_PAD], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([G_PAD], dtype=tl.float32)
        acc = tl.zeros([G_PAD, D_PAD], dtype=tl.float32)
        bt_row = block_tables + seq.to(tl.int64) * stride_bt
        for n0 in range(start, end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            n_mask = offs_n < end
            blk = tl.load(bt_row + offs_n // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
            in_blk = offs_n % BLOCK_SIZE
            kv_mask = n_mask[:, None]
            if D_PAD != HEAD_DIM:
                kv_mask = kv_mask & (offs_d[None, :] < HEAD_DIM)
            k_off = blk * stride_kb + in_blk * stride_ks + kvh * stride_kh
            # .to(q.dtype): an fp8 cache (per-tensor scale 1.0) widens in registers.
            k = tl.load(k_cache + k_off[:, None] + offs_d[None, :], mask=kv_mask,
                        other=0.0).to(q.dtype)
            v_off = blk * stride_vb + in_blk * stride_vs + kvh * stride_vh
            v = tl.load(v_cache + v_off[:, None] + offs_d[None, :], mask=kv_mask,
                        other=0.0).to(q.dtype)
            s = tl.dot(q, tl.trans(k)) * scale_log2
            if USE_SOFTCAP:
                s = softcap_log2(s, cap_log2)
            s = tl.where(n_mask[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.math.exp2(s - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new

        # A context that fits in one split is finished here (the reduce kernel skips it): the
        # same result as merging one split, without the partials' round trip.
        partials = seq_len - lo > partition
        if not SPLIT:
            partials = seq_len < 0  # always false, same type
        if partials:
            pa = (part_acc + seq.to(tl.int64) * stride_pa_s + heads[:, None] * stride_pa_h
                  + split * stride_pa_p + offs_d[None, :])
            tl.store(pa, acc, mask=g_mask[:, None])
            pm = part_ml + seq.to(tl.int64) * stride_pm_s + heads * stride_pm_h + split * stride_pm_p
            tl.store(pm, m_i, mask=g_mask)
            tl.store(pm + 1, l_i, mask=g_mask)
        else:
            l_safe = tl.where(l_i > 0.0, l_i, 1.0)  # empty context: write zeros, never NaN
            o = acc / l_safe[:, None]
            tl.store(out_ptr + seq.to(tl.int64) * stride_ot + heads[:, None] * stride_oh
                     + offs_d[None, :], o.to(out_ptr.dtype.element_ty), mask=qd_mask)

    @triton.jit(do_not_specialize=["window", "partition", "stride_pa_s", "stride_pa_h",
                                   "stride_pm_s", "stride_pm_h"],
                do_not_specialize_on_alignment=["seq_lens"])
    def _decode_reduce_kernel(
        out_ptr, part_acc, part_ml, seq_lens, window, partition,
        stride_ot, stride_oh,
        stride_pa_s, stride_pa_h, stride_pa_p,
        stride_pm_s, stride_pm_h, stride_pm_p,
        HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, USE_WINDOW: tl.constexpr,
        CHUNK: tl.constexpr,
    ):
        """Merge the splits of one (sequence, query head): rescale each to the global max.

        Splits are read CHUNK at a time (vector loads, no serial chain of scalar loads); the
        split count itself is never a compile-time size, so one variant serves every context.
        """
        seq = tl.program_id(0)
        head = tl.program_id(1)
        seq_len = tl.load(seq_lens + seq)
        lo = _window_start(seq_len, window, USE_WINDOW)
        n_splits = (seq_len - lo + partition - 1) // partition
        if n_splits == 1:  # the split kernel wrote this output itself
            return
        pm_base = part_ml + seq.to(tl.int64) * stride_pm_s + head * stride_pm_h
        pa_base = part_acc + seq.to(tl.int64) * stride_pa_s + head * stride_pa_h
        offs_c = tl.arange(0, CHUNK)
        offs_d = tl.arange(0, D_PAD)
        m_max = tl.full([CHUNK], float("-inf"), dtype=tl.float32)
        for c0 in range(0, n_splits, CHUNK):
            c_mask = c0 + offs_c < n_splits
            m_c = tl.load(pm_base + (c0 + offs_c) * stride_pm_p, mask=c_mask, other=float("-inf"))
            m_max = tl.maximum(m_max, m_c)
        m_all = tl.max(m_max, 0)
        acc = tl.zeros([D_PAD], dtype=tl.float32)
        l_vec = tl.zeros([CHUNK], dtype=tl.float32)
        for c0 in range(0, n_splits, CHUNK):
            c_mask = c0 + offs_c < n_splits
            pm = pm_base + (c0 + offs_c) * stride_pm_p
            m_c = tl.load(pm, mask=c_mask, other=float("-inf"))
            l_c = tl.load(pm + 1, mask=c_mask, other=0.0)
            # Masked or empty splits have m = -inf: weight 0, never NaN.
            w = tl.where(m_c > float("-inf"), tl.math.exp2(m_c - m_all), 0.0)
            l_vec += l_c * w
            a = tl.load(pa_base + (c0 + offs_c)[:, None] * stride_pa_p + offs_d[None, :],
                        mask=c_mask[:, None], other=0.0)
            acc += tl.sum(a * w[:, None], 0)
        l_tot = tl.sum(l_vec, 0)
        l_safe = tl.where(l_tot > 0.0, l_tot, 1.0)
        o = acc / l_safe
        tl.store(out_ptr + seq.to(tl.int64) * stride_ot + head * stride_oh + offs_d,
                 o.to(out_ptr.dtype.element_ty), mask=offs_d < HEAD_DIM)


def _check_cache(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor) -> None:
    if query.dim() != 3 or key_cache.dim() != 4 or key_cache.shape != value_cache.shape:
        raise ValueError(f"want query [T,H,D] and caches [NB,BS,KVH,D]; got {tuple(query.shape)}, "
                         f"{tuple(key_cache.shape)}, {tuple(value_cache.shape)}")
    _, heads, head_dim = query.shape
    _, block_size, kv_heads, cache_dim = key_cache.shape
    if cache_dim != head_dim or heads % kv_heads != 0:
        raise ValueError(f"head_dim {head_dim} vs cache {cache_dim}; heads {heads} must be a "
                         f"multiple of kv heads {kv_heads}")
    if head_dim not in SUPPORTED_HEAD_SIZES and not interpreting():
        raise ValueError(f"head_dim {head_dim} not in {SUPPORTED_HEAD_SIZES}")
    if block_size not in SUPPORTED_BLOCK_SIZES and not interpreting():
        raise ValueError(f"block_size {block_size} not in {SUPPORTED_BLOCK_SIZES}")
    check_dtype("query", query, (torch.float16, torch.bfloat16, torch.float32))
    if key_cache.dtype != value_cache.dtype or key_cache.dtype not in (
            query.dtype, torch.float8_e4m3fn):
        raise TypeError(f"query {query.dtype} and caches {key_cache.dtype}/{value_cache.dtype} "
                        "must share a dtype (or the caches be float8_e4m3fn)")
    for name, t in (("query", query), ("key_cache", key_cache), ("value_cache", value_cache)):
        check_last_dim_contiguous(name, t)


def choose_partition(num_seqs: int, num_kv_heads: int, span: int, block_n: int,
                     device: torch.device) -> int:
    """Tokens per context split, fixed by the batch's width rather than by `span` (the longest
    context the launch may see; under CUDA graphs the model's longest, far above real ones), so a
    step splits its contexts the same way whether it replays a graph or runs eagerly.

    Small batches (fewer (sequence, KV head) pairs than SMs): ~256 tokens, the finest split worth
    its overhead, so that short contexts still spread over several programs. (Sized to fill the
    SMs at the model's longest context instead, batch 4 got 512-token splits, one or two programs
    per context, and its decode step at serving contexts of 300-1000 tokens ran 0.3-0.4 ms slower
    than at batch 2: H200, Llama-3-8B shape.) Larger batches: ~512 tokens, because serving
    batches are ragged and one program walking a long context alone would set the kernel's time
    (H200, contexts log-normal around 900, batch 128: 0.61 of copy bandwidth unsplit, 0.78 at
    512-token splits; batch 32: 0.26 vs 0.51; uniform batch 64 x 4096: 0.97 unsplit). At most
    128 splits: longer spans get longer splits. Programs of splits past a context return at once.
    """
    wide = max(1, num_seqs * num_kv_heads) >= num_sms(device)
    tokens = max(_MAX_PARTITION if wide else _MIN_PARTITION, cdiv(max(span, 1), 128))
    return cdiv(tokens, block_n) * block_n


def paged_attention_decode(query: torch.Tensor, key_cache: torch.Tensor,
                           value_cache: torch.Tensor, block_tables: torch.Tensor,
                           seq_lens: torch.Tensor, scale: float, max_seq_len: int,
                           sliding_window: Optional[int] = None,
                           out: Optional[torch.Tensor] = None,
                           num_splits: Optional[int] = None, block_n: Optional[int] = None,
                           num_warps: int = 4, num_stages: int = 2,
                           softcap: Optional[float] = None) -> torch.Tensor:
    """Decode attention: query row i is sequence i's only new token. Returns out [T, H, D].
    `softcap`: scores become `softcap * tanh(score / softcap)` (Gemma 2).

    `max_seq_len` bounds `seq_lens` (host int, no device sync); the split count is derived from
    it, so a CUDA graph must be captured with the largest context it will replay with. Rows
    past `num_seqs = block_tables.shape[0]` (graph padding) are zeroed.
    """
    require_triton(query, key_cache, value_cache)
    same_device(query, key_cache, value_cache, block_tables, seq_lens)
    _check_cache(query, key_cache, value_cache)
    num_tokens, heads, head_dim = query.shape
    _, block_size, kv_heads, _ = key_cache.shape
    num_seqs = block_tables.shape[0]
    if num_tokens < num_seqs or seq_lens.shape[0] != num_seqs:
        raise ValueError(f"{num_tokens} query rows, {seq_lens.shape[0]} seq_lens, "
                         f"{num_seqs} block-table rows")
    if block_tables.dtype != torch.int32 or seq_lens.dtype != torch.int32:
        raise TypeError("block_tables and seq_lens must be int32")
    if block_tables.stride(1) != 1:
        raise ValueError("block_tables rows must be contiguous")
    out = output_like(out, query)
    if num_tokens > num_seqs:
        out[num_seqs:].zero_()
    if num_seqs == 0:
        return out

    group = heads // kv_heads
    d_pad = next_pow2(head_dim)
    g_pad = max(16, next_pow2(group))
    if block_n is None:
        block_n = 32 if d_pad >= 256 else 64
    block_n = max(block_n, block_size)
    use_window = sliding_window is not None and sliding_window > 0
    span = min(max_seq_len, sliding_window) if use_window else max_seq_len
    if num_splits is None:
        partition = choose_partition(num_seqs, kv_heads, span, block_n, query.device)
    else:
        partition = cdiv(cdiv(max(span, 1), num_splits), block_n) * block_n
    num_splits = max(1, cdiv(max(span, 1), partition))
    split = num_splits > 1
    scale_log2 = float(scale) * LOG2E
    window = int(sliding_window) if use_window else 0
    use_softcap = bool(softcap)
    cap_log2 = float(softcap) * LOG2E if use_softcap else 1.0

    if split:
        part_acc = torch.empty(num_seqs, heads, num_splits, d_pad, dtype=torch.float32,
                               device=query.device)
        part_ml = torch.empty(num_seqs, heads, num_splits, 2, dtype=torch.float32,
                              device=query.device)
    else:  # never touched; any tensor gives the kernel valid pointer arguments
        part_acc = out
        part_ml = out.new_empty((1, 1, 1, 2), dtype=torch.float32)
    pa_strides = (part_acc.stride(0), part_acc.stride(1), part_acc.stride(2)) if split else (0, 0, 0)
    pm_strides = (part_ml.stride(0), part_ml.stride(1), part_ml.stride(2)) if split else (0, 0, 0)

    _decode_split_kernel[(num_seqs, kv_heads, num_splits)](
        query, key_cache, value_cache, block_tables, seq_lens, out, part_acc, part_ml,
        scale_log2, window, partition, cap_log2,
        query.stride(0), query.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        *pa_strides, *pm_strides,
        HEAD_DIM=head_dim, D_PAD=d_pad, GROUP=group, G_PAD=g_pad, BLOCK_SIZE=block_size,
        BLOCK_N=block_n, USE_WINDOW=use_window, SPLIT=split, USE_SOFTCAP=use_softcap,
        num_warps=num_warps, num_stages=num_stages,
    )
    if split:
        _decode_reduce_kernel[(num_seqs, heads)](
            out, part_acc, part_ml, seq_lens, window, partition,
            out.stride(0), out.stride(1), *pa_strides, *pm_strides,
            HEAD_DIM=head_dim, D_PAD=d_pad, USE_WINDOW=use_window, CHUNK=16, num_warps=4,
        )
    return out


def paged_attention_decode_ref(query: torch.Tensor, key_cache: torch.Tensor,
                               value_cache: torch.Tensor, block_tables: torch.Tensor,
                               seq_lens: torch.Tensor, scale: float,
                               sliding_window: Optional[int] = None,
                               softcap: Optional[float] = None) -> torch.Tensor:
    """Reference for `paged_attention_decode`: the unified reference with one query per seq."""
    num_seqs = block_tables.shape[0]
    qsl = torch.arange(num_seqs + 1, dtype=torch.int32, device=query.device)
    return paged_attention_ref(query[:num_seqs], key_cache, value_cache, block_tables, seq_lens,
                               qsl, scale, sliding_window=sliding_window, softcap=softcap)


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
