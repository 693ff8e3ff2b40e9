"""Dynamic per-token FP8 (e4m3) quantization of activations, one read and one write per row.

x [R, C] (fp16 / bf16 / fp32) -> q [R, C] e4m3 and scale [R] fp32 with
scale = max(absmax(x[r]) / 448, 1e-12) and q = clamp(x / scale, -448, 448) rounded to nearest
e4m3, the activation side of FP8 W8A8 linear layers (`engine/quantization/fp8.py`). Torch needs
about eight full passes (abs, amax, casts, divide, clamp, cast) with fp32 temporaries; here one
program per row loops over its columns twice (absmax, then quantize; the second read is served
by L2), so a 1024-token step of a Llama-3-8B layer moves ~14 MB instead of ~100 MB per linear.
The kernel and its rounding are shared with the INT8 variant and the fused producers
(`gpu_kernels/row_quant.py`).
"""
from __future__ import annotations

import torch

from gpu_kernels.row_quant import MIN_SCALE, Q_MAX, quant_rows

FP8 = torch.float8_e4m3fn
FP8_MAX = Q_MAX["fp8"]


def quant_fp8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [R, C] -> (q [R, C] float8_e4m3fn, scale [R] float32); see the module docstring."""
    return quant_rows(x, "fp8")


def quant_fp8_rows_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch reference (the CPU path of engine/quantization/fp8.py)."""
    scale = (x.abs().amax(dim=-1).float() / FP8_MAX).clamp(min=MIN_SCALE)
    q = (x.float() / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale
