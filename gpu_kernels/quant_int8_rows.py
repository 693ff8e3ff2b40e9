"""Dynamic per-token symmetric INT8 quantization of activations, one program per row.

x [R, C] (fp16 / bf16 / fp32) -> q [R, C] int8 and scale [R] fp32 with
scale = max(absmax(x[r]) / 127, 1e-12) and q = clamp(round_half_even(x / scale), -128, 127): the
activation side of INT8 W8A8 layers (`engine/quantization/w8a8.py`), whose torch reference
(`quant_int8_rows_ref`, the CPU path) takes about eight full passes with fp32 temporaries. The
row is read twice (absmax, then quantize; the second read is served by L2). The kernel and its
rounding are shared with the FP8 variant and the fused producers (`gpu_kernels/row_quant.py`).
"""
from __future__ import annotations

import torch

from gpu_kernels.row_quant import MIN_SCALE, Q_MAX, quant_rows

INT8_MAX = Q_MAX["int8"]


def quant_int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [R, C] -> (q [R, C] int8, scale [R] float32); see the module docstring."""
    return quant_rows(x, "int8")


def quant_int8_rows_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch reference (the CPU path of engine/quantization/w8a8.py)."""
    scale = (x.abs().amax(dim=-1).float() / INT8_MAX).clamp(min=MIN_SCALE)
    q = torch.round(x.float() / scale[:, None]).clamp(-128, 127).to(torch.int8)
    return q, scale
