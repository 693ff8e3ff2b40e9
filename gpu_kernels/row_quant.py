"""Dynamic per-row (per-token) absmax quantization: the pieces every kernel that quantizes an
activation row shares, so that the standalone kernels (`quant_fp8_rows`, `quant_int8_rows`) and
the fused producers (`rms_norm_quant`, `silu_mul_quant`) round identically, bit for bit.

KIND "fp8": scale = max(absmax / 448, 1e-12), q = clamp(x / scale, -448, 448) rounded to the
nearest e4m3 value (ties to even). KIND "int8": scale = max(absmax / 127, 1e-12),
q = clamp(round_half_even(x / scale), -128, 127). The rounding is done in float32 arithmetic, so
the final cast is exact on every backend (the CPU interpreter's float casts truncate).
"""
from __future__ import annotations

import torch

from gpu_kernels._triton_utils import (FLOAT_DTYPES, check_dtype, check_last_dim_contiguous,
                                       require_triton, tl, triton)

MIN_SCALE = 1e-12
Q_DTYPES = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}
Q_MAX = {"fp8": float(torch.finfo(torch.float8_e4m3fn).max), "int8": 127.0}  # 448, 127

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
    def quant_scale(amax, KIND: tl.constexpr):
        """The row's fp32 scale from its absmax (a scalar)."""
        if KIND == "fp8":
            return tl.maximum(tl.math.div_rn(amax, 448.0), 1e-12)
        else:
            return tl.maximum(tl.math.div_rn(amax, 127.0), 1e-12)

    @triton.jit
    def quantize_values(x, scale, KIND: tl.constexpr):
        """float32 x / scale on the quantized grid, still float32 (the cast to e4m3 / int8 that
        follows is exact). Divisions round to nearest (`div_rn`), as torch's do: fp32 `/` may
        compile to an approximate division, or to a hoisted reciprocal in one kernel and not in
        another, and the fused and standalone kernels would then disagree on rare values."""
        v = tl.math.div_rn(x, scale)
        if KIND == "fp8":
            q = tl.minimum(tl.maximum(v, -448.0), 448.0)
            # e4m3 has 3 mantissa bits and is normal from 2^-6 (subnormal step 2^-9): round |q|
            # at step 2^(e - 3) with the fp32 rint trick (+ 1.5 * 2^23), ties to even.
            a = tl.abs(q)
            e = tl.maximum(((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -6)
            step = ((e + 124) << 23).to(tl.float32, bitcast=True)  # 2^(e - 3)
            r = ((a / step + 12582912.0) - 12582912.0) * step
            sign = q.to(tl.int32, bitcast=True) & -2147483648  # keeps -0.0, as torch's cast does
            return (r.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)
        else:
            r = (v + 12582912.0) - 12582912.0  # fp32 rint, ties to even (|v| <= 127.5 here)
            return tl.minimum(tl.maximum(r, -128.0), 127.0)

    @triton.jit
    def _quant_rows_kernel(x_ptr, q_ptr, s_ptr, C, stride_x, stride_q, KIND: tl.constexpr,
                           BLOCK: tl.constexpr):
        # One program per row; the row is read twice (absmax, then quantize; the second read is
        # served by L2).
        row = tl.program_id(0).to(tl.int64)
        amax = row_absmax(x_ptr + row * stride_x, C, BLOCK)
        scale = quant_scale(tl.max(amax, axis=0), KIND)
        tl.store(s_ptr + row, scale)
        for c0 in range(0, C, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            mask = cols < C
            x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
            q = quantize_values(x, scale, KIND)
            tl.store(q_ptr + row * stride_q + cols, q.to(q_ptr.dtype.element_ty), mask=mask)


def check_kind(kind: str) -> None:
    if kind not in Q_DTYPES:
        raise ValueError(f"quantization kind must be one of {sorted(Q_DTYPES)}, got {kind!r}")


def quant_rows(x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x [R, C] -> (q [R, C] of Q_DTYPES[kind], scale [R] float32); see the module docstring."""
    check_kind(kind)
    require_triton(x)
    check_dtype("x", x, FLOAT_DTYPES)
    if x.dim() != 2:
        raise ValueError(f"x must be [rows, cols], got {tuple(x.shape)}")
    check_last_dim_contiguous("x", x)
    rows, cols = x.shape
    q = torch.empty(rows, cols, dtype=Q_DTYPES[kind], device=x.device)
    scale = torch.empty(rows, dtype=torch.float32, device=x.device)
    if rows == 0:
        return q, scale
    block = min(2048, triton.next_power_of_2(max(cols, 16)))
    _quant_rows_kernel[(rows,)](x, q, scale, cols, x.stride(0), q.stride(0), KIND=kind,
                                BLOCK=block, num_warps=4)
    return q, scale
