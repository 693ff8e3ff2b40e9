"""Fused SiLU-and-mul + dynamic per-token quantization: the input of an FP8 / INT8 W8A8
down_proj straight from the gated activation.

Computes exactly what `silu_and_mul` (gpu_kernels/activation.py) followed by `quant_rows`
(gpu_kernels/row_quant.py) compute: y = silu(gate) * up rounded to x's dtype, then
scale = max(absmax(y) / QMAX, 1e-12) and q = y / scale on the e4m3 or int8 grid. One program per
row loops over column blocks twice: pass 1 computes y and its running absmax, pass 2 recomputes
y (the [gate | up] re-read is mostly served by L2) and stores q. y is never written: per row the
kernel reads 2d activation values and writes d bytes plus a scale, instead of writing y, reading
it twice more and writing q in a separate launch.
"""
from __future__ import annotations

import torch

from gpu_kernels._triton_utils import tl, triton
from gpu_kernels.activation import gated_rows, silu_and_mul_ref
from gpu_kernels.quant_fp8_rows import quant_fp8_rows_ref
from gpu_kernels.quant_int8_rows import quant_int8_rows_ref
from gpu_kernels.row_quant import Q_DTYPES, check_kind

if triton is not None:
    from gpu_kernels.activation import silu_mul_values
    from gpu_kernels.row_quant import quant_scale, quantize_values

    @triton.jit
    def _silu_mul_quant_kernel(x_ptr, q_ptr, s_ptr, d, stride_x, stride_q, KIND: tl.constexpr,
                               BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * stride_x
        dt = x_ptr.dtype.element_ty
        amax = tl.zeros((BLOCK,), dtype=tl.float32)
        for c0 in range(0, d, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            mask = cols < d
            a = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
            b = tl.load(x_row + d + cols, mask=mask, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(silu_mul_values(a, b, dt)))  # 0 where masked
        scale = quant_scale(tl.max(amax, axis=0), KIND)
        tl.store(s_ptr + row, scale)
        for c0 in range(0, d, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            mask = cols < d
            a = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
            b = tl.load(x_row + d + cols, mask=mask, other=0.0).to(tl.float32)
            q = quantize_values(silu_mul_values(a, b, dt), scale, KIND)
            tl.store(q_ptr + row * stride_q + cols, q.to(q_ptr.dtype.element_ty), mask=mask)


def silu_mul_quant(x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., 2d] = [gate | up] -> (q [R, d] e4m3 / int8, scale [R] fp32), R = x.numel() // 2d."""
    check_kind(kind)
    x2, d = gated_rows(x)
    rows = x2.shape[0]
    q = torch.empty(rows, d, dtype=Q_DTYPES[kind], device=x.device)
    scale = torch.empty(rows, dtype=torch.float32, device=x.device)
    if rows == 0:
        return q, scale
    block = min(2048, triton.next_power_of_2(max(d, 16)))
    _silu_mul_quant_kernel[(rows,)](x2, q, scale, d, x2.stride(0), d, KIND=kind, BLOCK=block,
                                    num_warps=8 if block >= 2048 else 4)
    return q, scale


def silu_mul_quant_ref(x: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The unfused torch version: `silu_and_mul_ref`, then the per-row quantization reference."""
    check_kind(kind)
    y = silu_and_mul_ref(x)
    quant = quant_fp8_rows_ref if kind == "fp8" else quant_int8_rows_ref
    return quant(y.reshape(-1, y.shape[-1]))
