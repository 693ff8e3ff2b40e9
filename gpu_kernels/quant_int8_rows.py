"""Dynamic per-token symmetric INT8 quantization of activations, one program per row.

x [R, C] (fp16 / bf16 / fp32) -> q [R, C] int8 and scale [R] fp32 with
scale = max(absmax(x[r]) / 127, 1e-12) and q = clamp(round_half_even(x / scale), -128, 127): the
activation side of INT8 W8A8 layers (`engine/quantization/w8a8.py`), whose torch reference
(`quant_int8_rows_ref`, the CPU path) takes about eight full passes with fp32 temporaries. The
row is read twice (absmax, then quantize; the second read is served by L2).
"""
from __future__ import annotations

import torch

from gpu_kernels._triton_utils import tl, triton
from gpu_kernels.quant_fp8_rows import launch_row_quant

INT8_MAX = 127.0
MIN_SCALE = 1e-12

if triton is not None:
    from gpu_kernels.quant_fp8_rows import row_absmax

    @triton.jit
    def _quant_int8_rows_kernel(x_ptr, q_ptr, s_ptr, C, stride_x, stride_q, min_scale,
                                BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        amax = row_absmax(x_ptr + row * stride_x, C, BLOCK)
        scale = tl.maximum(tl.max(amax, axis=0) / 127.0, min_scale)
        tl.store(s_ptr + row, scale)
        for c0 in range(0, C, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            mask = cols < C
            x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
            v = x / scale
            r = (v + 12582912.0) - 12582912.0  # + 1.5 * 2^23: fp32 rint, ties to even (|v| < 2^22)
            r = tl.minimum(tl.maximum(r, -128.0), 127.0)
            tl.store(q_ptr + row * stride_q + cols, r.to(tl.int8), mask=mask)


def quant_int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [R, C] -> (q [R, C] int8, scale [R] float32); see the module docstring."""
    return launch_row_quant(_quant_int8_rows_kernel if triton is not None else None, x,
                            torch.int8, MIN_SCALE)


def quant_int8_rows_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch reference (the CPU path of engine/quantization/w8a8.py)."""
    scale = (x.abs().amax(dim=-1).float() / INT8_MAX).clamp(min=MIN_SCALE)
    q = torch.round(x.float() / scale[:, None]).clamp(-128, 127).to(torch.int8)
    return q, scale
