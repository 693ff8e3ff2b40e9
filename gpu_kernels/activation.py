"""SiLU-and-mul, the gated MLP activation of Llama-style models (SwiGLU, Shazeer 2020).

x `[..., 2d]` -> out `[..., d]` with out = silu(x[..., :d]) * x[..., d:], silu(a) = a / (1 + e^-a)
computed in float32; silu(gate) is rounded to x's dtype before the product and the product once
more, like `F.silu(gate) * up`. One pass over the input instead of torch's three (slice, silu,
mul): bandwidth-bound, one program per (row, column tile).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from gpu_kernels._triton_utils import (FLOAT_DTYPES, cdiv, check_dtype, check_last_dim_contiguous,
                                   require_triton, tl, triton)

if triton is not None:
    from gpu_kernels._triton_utils import round_to

    @triton.jit
    def silu_mul_values(a, b, DT: tl.constexpr):
        """silu(a) * b for float32 a, b, rounded to DT (kept in float32). silu(a) is rounded to DT
        before the product, as the unfused model code (`act(gate) * up`) rounds it: half-precision
        results equal HF's bit for bit. Shared with the fused `silu_mul_quant`."""
        y = round_to(a / (1.0 + tl.exp(-a)), DT) * b
        return round_to(y, DT)

    @triton.jit
    def _silu_and_mul_kernel(x_ptr, out_ptr, d, stride_x, stride_o, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < d
        a = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(x_ptr + row * stride_x + d + cols, mask=mask, other=0.0).to(tl.float32)
        dt = out_ptr.dtype.element_ty
        tl.store(out_ptr + row * stride_o + cols, silu_mul_values(a, b, dt).to(dt), mask=mask)


def gated_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Check a gated-activation input x [..., 2d] = [gate | up]; returns (x as [R, 2d], d)."""
    require_triton(x)
    check_dtype("x", x, FLOAT_DTYPES)
    if x.shape[-1] % 2:
        raise ValueError(f"last dim must be even, got {x.shape[-1]}")
    d = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * d)
    check_last_dim_contiguous("x", x2)
    return x2, d


def silu_and_mul(x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [..., 2d] -> silu(x[..., :d]) * x[..., d:] of shape [..., d]."""
    x2, d = gated_rows(x)
    if out is None:
        out = torch.empty(*x.shape[:-1], d, dtype=x.dtype, device=x.device)
    if out.shape != (*x.shape[:-1], d) or not out.is_contiguous():
        raise ValueError(f"out must be contiguous {(*x.shape[:-1], d)}, got {tuple(out.shape)}")
    rows = x2.shape[0]
    if rows == 0 or d == 0:
        return out
    block = min(1024, triton.next_power_of_2(d))
    _silu_and_mul_kernel[(rows, cdiv(d, block))](x2, out, d, x2.stride(0), d, BLOCK=block,
                                                 num_warps=4)
    return out


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    return (F.silu(x[..., :d].float()).to(x.dtype).float() * x[..., d:].float()).to(x.dtype)
