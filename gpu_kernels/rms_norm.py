"""Fused RMSNorm with optional residual add (Zhang & Sennrich, 2019).

With a residual: s = x + residual (rounded to x's dtype, as the unfused model code does), and
new_residual = s; without: s = x and new_residual is x itself. Then
out = (s * rsqrt(mean(s^2) + eps)) rounded to x's dtype, times weight. One program per row: the
add, the reduction and the scaling happen in one read and one write of the row.
"""
from __future__ import annotations

from typing import Optional

import torch

from gpu_kernels._triton_utils import (FLOAT_DTYPES, check_dtype, next_pow2, require_triton,
                                   same_device, tl, triton)

if triton is not None:
    from gpu_kernels._triton_utils import round_to

    @triton.jit
    def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, n, eps,
                         stride_x, stride_r, stride_o, stride_ro,
                         HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n
        dt = x_ptr.dtype.element_ty
        xf = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)
            xf = round_to(xf + r.to(tl.float32), dt)
            tl.store(res_out_ptr + row * stride_ro + cols, xf.to(dt), mask=mask)
        rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / n + eps)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0)
        y = round_to(xf * rstd, dt) * w.to(tl.float32)
        dt_out = out_ptr.dtype.element_ty
        tl.store(out_ptr + row * stride_o + cols, round_to(y, dt_out).to(dt_out), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., n], weight [n] -> (out, new_residual); see the module docstring."""
    require_triton(x, weight)
    same_device(x, weight, residual)
    check_dtype("x", x, FLOAT_DTYPES)
    n = x.shape[-1]
    if weight.shape != (n,):
        raise ValueError(f"weight {tuple(weight.shape)} vs hidden size {n}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError("residual must match x in shape and dtype")
    x2 = x.reshape(-1, n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rows = x2.shape[0]
    if residual is not None:
        r2 = residual.reshape(-1, n).contiguous()
        res_out = torch.empty_like(out)
    else:
        r2, res_out = x2, out  # unused by the kernel
    if rows:
        _rms_norm_kernel[(rows,)](
            x2, r2, weight, out, res_out, n, float(eps),
            x2.stride(0), r2.stride(0), n, n,
            HAS_RESIDUAL=residual is not None, BLOCK=next_pow2(n),
            num_warps=8 if n >= 4096 else 4,
        )
    return out, (res_out if residual is not None else x)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Unfused torch version with the same rounding points."""
    if residual is not None:
        x = (x.float() + residual.float()).to(x.dtype)
    xf = x.float()
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (y.float() * weight.float()).to(x.dtype), x
