"""Normalisation layers. `rms_norm` is the one function a fused kernel can replace;
`rms_norm_quantized` is RMSNorm followed by the per-token quantization of the linear it feeds."""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from engine.quantization.input_quant import InputQuant, QuantizedInput, quantize_input


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: Optional[torch.Tensor] = None
             ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """RMSNorm as HF Llama computes it (statistics in float32, weight applied in x's dtype).

    With `residual`, first forms `x + residual` (the new residual stream) and returns
    `(rms_norm(x + residual), x + residual)`; without it returns the normalised tensor.
    """
    if x.is_cuda and x.dtype != torch.float32:
        from gpu_kernels.rms_norm import rms_norm as fused_rms_norm
        out, new_residual = fused_rms_norm(x, weight, eps, residual)
        return out if residual is None else (out, new_residual)
    if residual is not None:
        x = x + residual
        residual = x
    dtype = x.dtype
    xf = x.float()
    var = xf.pow(2).mean(-1, keepdim=True)
    out = weight * (xf * torch.rsqrt(var + eps)).to(dtype)
    return out if residual is None else (out, residual)


def rms_norm_quantized(x: torch.Tensor, weight: torch.Tensor, eps: float, spec: InputQuant,
                       residual: Optional[torch.Tensor] = None
                       ) -> Union[QuantizedInput, tuple[QuantizedInput, torch.Tensor]]:
    """`rms_norm`, then `quantize_input(out, spec)`: one fused kernel on CUDA (16-bit dtypes, as
    `rms_norm`), the two steps elsewhere; the same bits either way."""
    if x.is_cuda and x.dtype != torch.float32:
        from gpu_kernels.rms_norm_quant import rms_norm_quant
        q, scale, new_residual = rms_norm_quant(x, weight, eps, spec.kind, residual)
        out = QuantizedInput(q, scale, x.dtype, x.shape[:-1])
    elif residual is None:
        out = quantize_input(rms_norm(x, weight, eps), spec)
    else:
        normed, new_residual = rms_norm(x, weight, eps, residual)
        out = quantize_input(normed, spec)
    return out if residual is None else (out, new_residual)


class RMSNorm(nn.Module):
    """Root-mean-square norm with an optional fused residual add (see `rms_norm`).

    `output_quant` (set by `wire_input_quant` when the linear this norm feeds quantizes its input
    per token) makes forward return that quantized input, a `QuantizedInput`, instead of the
    normalised tensor."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps
        self.output_quant: Optional[InputQuant] = None

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None):
        """x [..., hidden] -> out, or (out, x + residual) with a residual; out is a tensor, or
        a `QuantizedInput` when `output_quant` is set."""
        if self.output_quant is not None:
            return rms_norm_quantized(x, self.weight, self.variance_epsilon, self.output_quant,
                                      residual)
        return rms_norm(x, self.weight, self.variance_epsilon, residual)


# LayerNorm (GPT-2, OPT, GPT-NeoX) is torch's: its CPU/GPU kernels are already fused.
LayerNorm = nn.LayerNorm


class GemmaRMSNorm(nn.Module):
    """Gemma's RMSNorm: the weight is stored as an offset from one, applied as `(1 + w)`, and the
    whole computation runs in float32 before the cast back (as HF Gemma 2/3 compute it)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * (1.0 + self.weight.float())).to(x.dtype)
