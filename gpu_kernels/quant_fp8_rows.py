"""Dynamic per-token FP8 (e4m3) quantization of activations, one read and one write per row.

x [R, C] (fp16 / bf16 / fp32) -> q [R, C] e4m3 and scale [R] fp32 with
scale = max(absmax(x[r]) / 448, 1e-12) and q = clamp(x / scale, -448, 448) rounded to nearest
e4m3, the activation side of FP8 W8A8 linear layers (`engine/quantization/fp8.py`). Torch needs
about eight full passes (abs, amax, casts, divide, clamp, cast) with fp32 temporaries; here one
program per row loops over its columns twice (absmax, then quantize; the second read is served
by L2), so a 1024-token step of a Llama-3-8B layer moves ~14 MB instead of ~100 MB per linear.
"""
from __future__ import annotations

import torch

from gpu_kernels._triton_utils import (FLOAT_DTYPES, check_dtype, check_last_dim_contiguous,
                                       require_triton, tl, triton)

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)
MIN_SCALE = 1e-12

if triton is not None:

    @triton.jit
    def row_absmax(x_row, C, BLOCK: tl.constexpr):
        """max |x_row[c]| over c < C, as a [BLOCK] vector (take tl.max of it)."""
        amax = tl.zeros((BLOCK,), dtype=tl.float32)
        for c0 in range(0, C, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            x = tl.load(x_row + cols, mask=cols < C, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(x))
        return amax

    @triton.jit
    def _quant_fp8_rows_kernel(x_ptr, q_ptr, s_ptr, C, stride_x, stride_q, fp8_max, min_scale,
                               BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        amax = row_absmax(x_ptr + row * stride_x, C, BLOCK)
        scale = tl.maximum(tl.max(amax, axis=0) / fp8_max, min_scale)
        tl.store(s_ptr + row, scale)
        for c0 in range(0, C, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            mask = cols < C
            x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
            q = tl.minimum(tl.maximum(x / scale, -fp8_max), fp8_max)
            # Round to the e4m3 grid here (nearest, ties to even), so the cast below is exact
            # on every backend: e4m3 has 3 mantissa bits, normal from 2^-6 (subnormal step 2^-9).
            a = tl.abs(q)
            e = tl.maximum(((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -6)
            step = ((e + 124) << 23).to(tl.float32, bitcast=True)  # 2^(e - 3)
            r = ((a / step + 12582912.0) - 12582912.0) * step  # + 1.5 * 2^23: fp32 rint
            q = tl.where(q < 0, -r, r)
            tl.store(q_ptr + row * stride_q + cols, q.to(q_ptr.dtype.element_ty), mask=mask)


def quant_fp8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [R, C] -> (q [R, C] float8_e4m3fn, scale [R] float32); see the module docstring."""
    return launch_row_quant(_quant_fp8_rows_kernel if triton is not None else None, x, FP8,
                            FP8_MAX, MIN_SCALE)


def launch_row_quant(kernel, x: torch.Tensor, q_dtype: torch.dtype,
                     *scalars) -> tuple[torch.Tensor, torch.Tensor]:
    """Check x [R, C], allocate q [R, C] `q_dtype` and scale [R] fp32, and run a per-row
    quantization kernel (one program per row) taking (x, q, scale, C, strides, *scalars)."""
    require_triton(x)
    check_dtype("x", x, FLOAT_DTYPES)
    if x.dim() != 2:
        raise ValueError(f"x must be [rows, cols], got {tuple(x.shape)}")
    check_last_dim_contiguous("x", x)
    rows, cols = x.shape
    q = torch.empty(rows, cols, dtype=q_dtype, device=x.device)
    scale = torch.empty(rows, dtype=torch.float32, device=x.device)
    if rows == 0:
        return q, scale
    block = min(2048, triton.next_power_of_2(max(cols, 16)))
    kernel[(rows,)](x, q, scale, cols, x.stride(0), q.stride(0), *scalars, BLOCK=block,
                    num_warps=4)
    return q, scale


def quant_fp8_rows_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch reference (the CPU path of engine/quantization/fp8.py)."""
    scale = (x.abs().amax(dim=-1).float() / FP8_MAX).clamp(min=MIN_SCALE)
    q = (x.float() / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale
