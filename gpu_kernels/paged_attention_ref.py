"""Pure-torch reference for paged attention over packed variable-length queries.

Each sequence i has query rows `query_start_loc[i]:query_start_loc[i+1]` (its newest tokens) and a
context of `seq_lens[i]` tokens whose K/V sit in the blocks of `block_tables[i]`. Query j of a
sequence with q_len queries sits at position `seq_len - q_len + j` and attends causally to every
key at or before it (optionally within `sliding_window`). GQA: query head h reads KV head
h // (H // KVH). Softmax runs in float32. With `softcap` (Gemma 2's attn_logit_softcapping) the
scaled scores become `softcap * tanh(score / softcap)` before masking and softmax. This is the ground truth the Triton kernels are tested
against, and the CPU engine's attention.
"""
from __future__ import annotations

from typing import Optional

import torch


def _gather_context(cache: torch.Tensor, block_row: torch.Tensor, length: int) -> torch.Tensor:
    """[length, KVH, D] for one sequence, read through its block table row."""
    bs = cache.shape[1]
    nblk = (length + bs - 1) // bs
    return cache[block_row[:nblk].long()].reshape(nblk * bs, *cache.shape[2:])[:length]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
            mask: Optional[torch.Tensor], softcap: Optional[float] = None) -> torch.Tensor:
    """q [B, Q, H, D], k/v [B, S, KVH, D], mask [B, Q, S] bool (True = attend)."""
    b, nq, h, d = q.shape
    kvh = k.shape[2]
    g = h // kvh
    qf = q.float().view(b, nq, kvh, g, d)
    scores = torch.einsum("bqkgd,bskd->bkgqs", qf, k.float()) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("bkgqs,bskd->bqkgd", probs, v.float())
    return out.reshape(b, nq, h, v.shape[-1])


def paged_attention_ref(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                        block_tables: torch.Tensor, seq_lens: torch.Tensor,
                        query_start_loc: torch.Tensor, scale: float,
                        sliding_window: Optional[int] = None,
                        query_lens_cpu: Optional[list[int]] = None,
                        seq_lens_cpu: Optional[list[int]] = None,
                        softcap: Optional[float] = None) -> torch.Tensor:
    """query [T, H, D] -> out [T, H, D] (query's dtype)."""
    num_seqs = block_tables.shape[0]
    if seq_lens_cpu is None:
        seq_lens_cpu = seq_lens.tolist()
    if query_lens_cpu is None:
        qsl = query_start_loc.tolist()
        query_lens_cpu = [qsl[i + 1] - qsl[i] for i in range(num_seqs)]
    out = torch.empty_like(query)
    if num_seqs == 0:
        return out
    if max(query_lens_cpu) == 1 and sum(query_lens_cpu) == query.shape[0]:
        return _decode_batched(query, key_cache, value_cache, block_tables, seq_lens_cpu, scale,
                               sliding_window, softcap).to(query.dtype)
    start = 0
    for i in range(num_seqs):
        q_len, s_len = query_lens_cpu[i], seq_lens_cpu[i]
        if q_len == 0:
            continue
        k = _gather_context(key_cache, block_tables[i], s_len)
        v = _gather_context(value_cache, block_tables[i], s_len)
        q_pos = torch.arange(s_len - q_len, s_len, device=query.device)
        k_pos = torch.arange(s_len, device=query.device)
        mask = k_pos[None, :] <= q_pos[:, None]
        if sliding_window is not None:
            mask &= k_pos[None, :] > q_pos[:, None] - sliding_window
        o = _attend(query[start:start + q_len][None], k[None], v[None], scale, mask[None],
                    softcap)
        out[start:start + q_len] = o[0].to(query.dtype)
        start += q_len
    return out


def _decode_batched(query, key_cache, value_cache, block_tables, seq_lens_cpu, scale,
                    sliding_window, softcap=None):
    """All sequences have one query token: pad contexts to the longest and attend at once."""
    bs = key_cache.shape[1]
    max_len = max(seq_lens_cpu)
    nblk = (max_len + bs - 1) // bs
    bt = block_tables[:, :nblk].long()
    b = bt.shape[0]
    k = key_cache[bt].reshape(b, nblk * bs, *key_cache.shape[2:])
    v = value_cache[bt].reshape(b, nblk * bs, *value_cache.shape[2:])
    if v.dtype != query.dtype:  # an fp8 cache: widen (per-tensor scale 1.0) before masking
        k, v = k.to(query.dtype), v.to(query.dtype)
    lens = torch.tensor(seq_lens_cpu, device=query.device)
    k_pos = torch.arange(nblk * bs, device=query.device)
    mask = k_pos[None, :] < lens[:, None]
    if sliding_window is not None:
        mask &= k_pos[None, :] > (lens[:, None] - 1 - sliding_window)
    # Slots past a sequence's end may hold anything (even NaN): zero them, since 0 * NaN = NaN.
    v = v.masked_fill(~mask[:, :, None, None], 0)
    return _attend(query[:, None], k, v, scale, mask[:, None, :], softcap)[:, 0]
