"""Fused (residual add +) RMSNorm + dynamic per-token quantization: the input of an FP8 / INT8
W8A8 linear layer straight from the norm in front of it (qkv_proj, gate_up_proj).

Computes exactly what `rms_norm` (gpu_kernels/rms_norm.py) followed by `quant_rows`
(gpu_kernels/row_quant.py) compute: the normalised row y, rounded to x's dtype, then
scale = max(absmax(y) / QMAX, 1e-12) and q = y / scale on the e4m3 or int8 grid. One program per
row holds the whole row in registers (as rms_norm does), so y is never written out or re-read:
per row it reads x (+ residual) and writes q (1 byte per value), the scale and the new residual,
instead of writing y and reading it back for a separate quantization launch.
"""
from __future__ import annotations

from typing import Optional

import torch

from gpu_kernels._triton_utils import tl, triton
from gpu_kernels.quant_fp8_rows import quant_fp8_rows_ref
from gpu_kernels.quant_int8_rows import quant_int8_rows_ref
from gpu_kernels.rms_norm import check_inputs, launch_config, rms_norm_ref
from gpu_kernels.row_quant import Q_DTYPES, check_kind

if triton is not None:
    from gpu_kernels.rms_norm import rms_norm_row
    from gpu_kernels.row_quant import quant_scale, quantize_values

    @triton.jit
    def _rms_norm_quant_kernel(x_ptr, res_ptr, w_ptr, q_ptr, s_ptr, res_out_ptr, n, eps,
                               stride_x, stride_r, stride_q, stride_ro,
                               HAS_RESIDUAL: tl.constexpr, KIND: tl.constexpr,
                               BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        y = rms_norm_row(x_ptr, res_ptr, w_ptr, res_out_ptr, row, n, eps, stride_x, stride_r,
                         stride_ro, HAS_RESIDUAL, BLOCK)
        scale = quant_scale(tl.max(tl.abs(y), axis=0), KIND)  # y is 0 past n
        tl.store(s_ptr + row, scale)
        q = quantize_values(y, scale, KIND)
        cols = tl.arange(0, BLOCK)
        tl.store(q_ptr + row * stride_q + cols, q.to(q_ptr.dtype.element_ty), mask=cols < n)


def rms_norm_quant(x: torch.Tensor, weight: torch.Tensor, eps: float, kind: str,
                   residual: Optional[torch.Tensor] = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [..., n], weight [n] -> (q [R, n] e4m3 / int8, scale [R] fp32, new_residual [..., n]),
    R = x.numel() // n; new_residual is x + residual (x itself without a residual)."""
    check_kind(kind)
    x2, r2 = check_inputs(x, weight, residual)
    rows, n = x2.shape
    q = torch.empty(rows, n, dtype=Q_DTYPES[kind], device=x.device)
    scale = torch.empty(rows, dtype=torch.float32, device=x.device)
    res_out = torch.empty(x.shape, dtype=x.dtype, device=x.device) if residual is not None else x
    if rows:
        _rms_norm_quant_kernel[(rows,)](
            x2, r2 if r2 is not None else x2, weight, q, scale, res_out, n, float(eps),
            x2.stride(0), r2.stride(0) if r2 is not None else 0, n, n,
            HAS_RESIDUAL=residual is not None, KIND=kind, **launch_config(n))
    return q, scale, res_out


def rms_norm_quant_ref(x: torch.Tensor, weight: torch.Tensor, eps: float, kind: str,
                       residual: Optional[torch.Tensor] = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The unfused torch version: `rms_norm_ref`, then the per-row quantization reference."""
    check_kind(kind)
    y, new_residual = rms_norm_ref(x, weight, eps, residual)
    quant = quant_fp8_rows_ref if kind == "fp8" else quant_int8_rows_ref
    q, scale = quant(y.reshape(-1, x.shape[-1]))
    return q, scale, new_residual
