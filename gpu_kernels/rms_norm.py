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
    def rms_norm_row(x_ptr, res_ptr, w_ptr, res_out_ptr, row, n, eps, stride_x, stride_r,
                     stride_ro, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
        """Row `row`'s normalised values [BLOCK] (float32, rounded to x's dtype; 0 past n), after
        storing its new residual when HAS_RESIDUAL. Shared with the fused `rms_norm_quant`:
        launched with the same BLOCK and num_warps (`launch_config`), both reduce in the same
        order and agree bit for bit."""
        cols = tl.arange(0, BLOCK)
        mask = cols < n
        dt = x_ptr.dtype.element_ty
        xf = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)
            xf = round_to(xf + r.to(tl.float32), dt)
            tl.store(res_out_ptr + row * stride_ro + cols, xf.to(dt), mask=mask)
        # The sum of squares is taken in float64: each square of a 16-bit float is exact there
        # and so, all but always, is the sum, so its float32 rounding does not depend on the
        # reduction tree. The compiler picks each kernel's register layout (and so its tree) on
        # its own: the fused rms_norm_quant, storing 1-byte values, summed in another order than
        # rms_norm, and on the H200 1-4 of 8M quantized values came out one step apart. Division
        # and square root are correctly rounded and FMA contraction is off (launch_config).
        xd = xf.to(tl.float64)
        ss = tl.sum(xd * xd, 0).to(tl.float32)
        rstd = tl.math.div_rn(1.0, tl.sqrt_rn(tl.math.div_rn(ss, n.to(tl.float32)) + eps))
        w = tl.load(w_ptr + cols, mask=mask, other=0.0)
        return round_to(round_to(xf * rstd, dt) * w.to(tl.float32), dt)

    @triton.jit
    def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, n, eps,
                         stride_x, stride_r, stride_o, stride_ro,
                         HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        y = rms_norm_row(x_ptr, res_ptr, w_ptr, res_out_ptr, row, n, eps, stride_x, stride_r,
                         stride_ro, HAS_RESIDUAL, BLOCK)
        cols = tl.arange(0, BLOCK)
        tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=cols < n)


def launch_config(n: int) -> dict:
    """BLOCK and num_warps for a row of n (the whole row in registers), FMA contraction off."""
    return dict(BLOCK=next_pow2(n), num_warps=8 if n >= 4096 else 4, enable_fp_fusion=False)


def check_inputs(x: torch.Tensor, weight: torch.Tensor,
                 residual: Optional[torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Validate; x and residual as [rows, n] with a contiguous last dim (residual contiguous)."""
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
    r2 = residual.reshape(-1, n).contiguous() if residual is not None else None
    return x2, r2


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., n], weight [n] -> (out, new_residual); see the module docstring."""
    x2, r2 = check_inputs(x, weight, residual)
    n, rows = x2.shape[1], x2.shape[0]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    res_out = torch.empty_like(out) if residual is not None else out
    if rows:
        _rms_norm_kernel[(rows,)](
            x2, r2 if r2 is not None else x2, weight, out, res_out, n, float(eps),
            x2.stride(0), r2.stride(0) if r2 is not None else 0, n, n,
            HAS_RESIDUAL=residual is not None, **launch_config(n))
    return out, (res_out if residual is not None else x)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Unfused torch version with the same rounding points."""
    if residual is not None:
        x = (x.float() + residual.float()).to(x.dtype)
    xf = x.float()
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (y.float() * weight.float()).to(x.dtype), x
