"""Rotary position embedding (RoPE, Su et al. 2021), applied in place to q and k.

`cos_sin_cache[pos]` holds `rot_dim` values: cos(pos * f_i) for i < rot_dim/2, then the sines.
Each head's first `rot_dim` features are rotated in pairs (x1, x2) -> (x1 cos - x2 sin,
x2 cos + x1 sin); features past `rot_dim` (partial rotary) are left alone. Pairs are
(i, i + rot_dim/2) in the GPT-NeoX style (`is_neox=True`, Llama) and (2i, 2i+1) in the GPT-J
style. One program per token rotates all its query and key heads, rounding like the unfused
model code (see `_rotate_heads`).
"""
from __future__ import annotations

from typing import Optional

import torch

from gpu_kernels._triton_utils import (FLOAT_DTYPES, check_dtype, next_pow2, require_triton,
                                   same_device, tl, triton)

if triton is not None:
    from gpu_kernels._triton_utils import round_to

    @triton.jit
    def _rotate_heads(x_ptr, stride_h, cos, sin, heads, HALF: tl.constexpr,
                      H_PAD: tl.constexpr, HALF_PAD: tl.constexpr, IS_NEOX: tl.constexpr):
        offs_h = tl.arange(0, H_PAD)
        offs_r = tl.arange(0, HALF_PAD)
        mask = (offs_h[:, None] < heads) & (offs_r[None, :] < HALF)
        base = x_ptr + offs_h[:, None] * stride_h
        if IS_NEOX:
            p1 = base + offs_r[None, :]
            p2 = p1 + HALF
        else:
            p1 = base + 2 * offs_r[None, :]
            p2 = p1 + 1
        dt = x_ptr.dtype.element_ty
        x1 = tl.load(p1, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(p2, mask=mask, other=0.0).to(tl.float32)
        # Each product and the sum are rounded to x's dtype, as the unfused model code rounds
        # them (cos/sin arrive rounded): half-precision results equal HF's bit for bit.
        c = cos[None, :]
        s = sin[None, :]
        o1 = round_to(x1 * c, dt) - round_to(x2 * s, dt)
        o2 = round_to(x2 * c, dt) + round_to(x1 * s, dt)
        tl.store(p1, round_to(o1, dt).to(dt), mask=mask)
        tl.store(p2, round_to(o2, dt).to(dt), mask=mask)

    @triton.jit
    def _rotary_kernel(pos_ptr, q_ptr, k_ptr, cache_ptr, stride_qt, stride_qh, stride_kt,
                       stride_kh, stride_c, num_q_heads, num_k_heads,
                       HALF: tl.constexpr, HALF_PAD: tl.constexpr, QH_PAD: tl.constexpr,
                       KH_PAD: tl.constexpr, IS_NEOX: tl.constexpr, HAS_KEY: tl.constexpr):
        tok = tl.program_id(0).to(tl.int64)
        pos = tl.load(pos_ptr + tok).to(tl.int64)
        offs_r = tl.arange(0, HALF_PAD)
        cmask = offs_r < HALF
        dt = q_ptr.dtype.element_ty
        cos = round_to(tl.load(cache_ptr + pos * stride_c + offs_r, mask=cmask,
                               other=0.0).to(tl.float32), dt)
        sin = round_to(tl.load(cache_ptr + pos * stride_c + HALF + offs_r, mask=cmask,
                               other=0.0).to(tl.float32), dt)
        _rotate_heads(q_ptr + tok * stride_qt, stride_qh, cos, sin, num_q_heads, HALF,
                      QH_PAD, HALF_PAD, IS_NEOX)
        if HAS_KEY:
            _rotate_heads(k_ptr + tok * stride_kt, stride_kh, cos, sin, num_k_heads, HALF,
                          KH_PAD, HALF_PAD, IS_NEOX)


def _as_heads(x: torch.Tensor, head_size: int, name: str) -> torch.Tensor:
    """[T, H*D] or [T, H, D] -> a [T, H, D] view (never a copy: the rotation is in place)."""
    if x.dim() == 2:
        if x.shape[1] % head_size or x.stride(1) != 1:
            raise ValueError(f"{name}: [T, H*D] with contiguous rows of whole heads required")
        x = x.view(x.shape[0], x.shape[1] // head_size, head_size)
    if x.dim() != 3 or x.shape[2] != head_size or x.stride(2) != 1:
        raise ValueError(f"{name}: want [T, H, {head_size}] contiguous in D, got "
                         f"{tuple(x.shape)} strides {x.stride()}")
    return x


def rotary_embedding(positions: torch.Tensor, query: torch.Tensor, key: Optional[torch.Tensor],
                     head_size: int, cos_sin_cache: torch.Tensor, is_neox: bool = True) -> None:
    """Rotate query `[T, H(*D)]` and key `[T, KVH(*D)]` in place at `positions` `[T]`."""
    require_triton(query, cos_sin_cache)
    same_device(positions, query, key, cos_sin_cache)
    check_dtype("query", query, FLOAT_DTYPES)
    q = _as_heads(query, head_size, "query")
    k = _as_heads(key, head_size, "key") if key is not None else None
    num_tokens = q.shape[0]
    if positions.shape != (num_tokens,) or positions.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"positions must be [T] int: {tuple(positions.shape)}")
    if k is not None and k.shape[0] != num_tokens:
        raise ValueError("query and key token counts differ")
    rot_dim = cos_sin_cache.shape[-1]
    if cos_sin_cache.dim() != 2 or rot_dim % 2 or rot_dim > head_size or \
            cos_sin_cache.stride(1) != 1:
        raise ValueError(f"cos_sin_cache must be [max_pos, rot_dim<=head_size] contiguous, "
                         f"got {tuple(cos_sin_cache.shape)}")
    if num_tokens == 0:
        return
    half = rot_dim // 2
    kk = k if k is not None else q
    _rotary_kernel[(num_tokens,)](
        positions, q, kk, cos_sin_cache, q.stride(0), q.stride(1), kk.stride(0), kk.stride(1),
        cos_sin_cache.stride(0), q.shape[1], kk.shape[1],
        HALF=half, HALF_PAD=next_pow2(half), QH_PAD=next_pow2(q.shape[1]),
        KH_PAD=next_pow2(kk.shape[1]), IS_NEOX=is_neox, HAS_KEY=k is not None, num_warps=4,
    )


def rotary_embedding_ref(positions: torch.Tensor, query: torch.Tensor,
                         key: Optional[torch.Tensor], head_size: int,
                         cos_sin_cache: torch.Tensor, is_neox: bool = True) -> None:
    """Torch version, in place, same rounding: cos/sin rounded to x's dtype, then arithmetic in
    x's dtype (each product and the sum rounded), as HF's model code computes it."""
    rot_dim = cos_sin_cache.shape[-1]
    half = rot_dim // 2
    cs = cos_sin_cache[positions.long()]
    for x in (query, key):
        if x is None:
            continue
        cos, sin = cs[:, None, :half].to(x.dtype), cs[:, None, half:].to(x.dtype)
        xh = x.view(x.shape[0], -1, head_size)
        rot = xh[..., :rot_dim]
        if is_neox:
            x1, x2 = rot[..., :half], rot[..., half:]
            out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        else:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
            out = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
        xh[..., :rot_dim] = out
