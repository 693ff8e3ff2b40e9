"""Write this step's K/V rows into the paged cache at their slots ("reshape and cache").

key/value `[T, KVH, D]` (any token and head strides, e.g. views into a fused QKV output);
caches `[num_blocks, block_size, KVH, D]`; token t goes to block `slot // block_size`, row
`slot % block_size`. Negative slots mark padding tokens and are skipped.

Algorithm: a plain scatter, one program per token moving all its heads (KVH x D elements of K
and of V) with contiguous, vectorised stores; bandwidth-bound. The reference is
`kernels.reshape_and_cache_ref.reshape_and_cache_ref`, re-exported here.
"""
from __future__ import annotations

import torch

from gpu_kernels._triton_utils import (check_last_dim_contiguous, next_pow2, require_triton,
                                   same_device, tl, triton)
from gpu_kernels.reshape_and_cache_ref import reshape_and_cache_ref

__all__ = ["reshape_and_cache", "reshape_and_cache_ref"]


if triton is not None:

    @triton.jit
    def _reshape_and_cache_kernel(
        key, value, key_cache, value_cache, slot_mapping,
        stride_kt, stride_kh, stride_vt, stride_vh,
        stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
        KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, H_PAD: tl.constexpr,
        D_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr, FP8: tl.constexpr,
    ):
        tok = tl.program_id(0)
        slot = tl.load(slot_mapping + tok)
        if slot < 0:
            return
        blk = slot // BLOCK_SIZE
        row = slot % BLOCK_SIZE
        offs_h = tl.arange(0, H_PAD)
        offs_d = tl.arange(0, D_PAD)
        mask = (offs_h[:, None] < KV_HEADS) & (offs_d[None, :] < HEAD_DIM)
        t = tok.to(tl.int64)
        k = tl.load(key + t * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :],
                    mask=mask)
        v = tl.load(value + t * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :],
                    mask=mask)
        if FP8:  # e4m3 cache, per-tensor scale 1.0: saturate rather than overflow to NaN
            k = tl.minimum(tl.maximum(k.to(tl.float32), -448.0), 448.0)
            v = tl.minimum(tl.maximum(v.to(tl.float32), -448.0), 448.0)
        kc = key_cache + blk * stride_kcb + row * stride_kcs
        vc = value_cache + blk * stride_vcb + row * stride_vcs
        tl.store(kc + offs_h[:, None] * stride_kch + offs_d[None, :],
                 k.to(key_cache.dtype.element_ty), mask=mask)
        tl.store(vc + offs_h[:, None] * stride_vch + offs_d[None, :],
                 v.to(value_cache.dtype.element_ty), mask=mask)


def reshape_and_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                      value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """Scatter key/value `[T, KVH, D]` into the caches at `slot_mapping` `[T]` (int64/int32)."""
    require_triton(key, value, key_cache, value_cache)
    same_device(key, value, key_cache, value_cache, slot_mapping)
    if key.dim() != 3 or key.shape != value.shape:
        raise ValueError(f"key/value must be [T, KVH, D]: {tuple(key.shape)}, {tuple(value.shape)}")
    if key_cache.dim() != 4 or key_cache.shape != value_cache.shape:
        raise ValueError(f"caches must be [NB, BS, KVH, D]: {tuple(key_cache.shape)}")
    num_tokens, kv_heads, head_dim = key.shape
    if key_cache.shape[2:] != (kv_heads, head_dim):
        raise ValueError(f"cache heads/dim {tuple(key_cache.shape[2:])} vs {(kv_heads, head_dim)}")
    if slot_mapping.shape != (num_tokens,) or slot_mapping.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"slot_mapping must be [T] int: {tuple(slot_mapping.shape)}, "
                         f"{slot_mapping.dtype}")
    for name, t in (("key", key), ("value", value), ("key_cache", key_cache),
                    ("value_cache", value_cache)):
        check_last_dim_contiguous(name, t)
    if num_tokens == 0:
        return
    _reshape_and_cache_kernel[(num_tokens,)](
        key, value, key_cache, value_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        KV_HEADS=kv_heads, HEAD_DIM=head_dim, H_PAD=next_pow2(kv_heads),
        D_PAD=next_pow2(head_dim), BLOCK_SIZE=key_cache.shape[1],
        FP8=key_cache.dtype == torch.float8_e4m3fn, num_warps=4,
    )
