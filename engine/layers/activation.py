"""Activations by HF name, and the gated SiLU of Llama-family MLPs.

`silu_and_mul` is the function a fused kernel can replace; `silu_and_mul_quantized` is it
followed by the per-token quantization of the linear it feeds (down_proj).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from engine.quantization.input_quant import InputQuant, QuantizedInput, quantize_input


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2*d] = [gate | up] -> silu(gate) * up, [..., d]."""
    if x.is_cuda and x.dtype != torch.float32:
        from gpu_kernels.activation import silu_and_mul as fused_silu_and_mul
        return fused_silu_and_mul(x)
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


# The fused kernel runs one program per row, walking the row twice (absmax, then quantize): below
# ~8 rows per SM it leaves the GPU idle where the unfused pair (a column-parallel SiLU kernel,
# then the per-row quantization) does not. Fused at every size, FP8 / INT8 sharegpt throughput
# read 1.10x / 1.14x bf16 on a H200 (unfused, an earlier lease: 1.15x / 1.18x); below this many
# rows the pair runs instead (not yet measured).
FUSED_MIN_ROWS = 1024


def silu_and_mul_quantized(x: torch.Tensor, spec: InputQuant) -> QuantizedInput:
    """`silu_and_mul`, then `quantize_input(out, spec)`: one fused kernel on CUDA (16-bit dtypes,
    as `silu_and_mul`), the two steps elsewhere; the same bits either way."""
    if x.is_cuda and x.dtype != torch.float32 and x.numel() >= FUSED_MIN_ROWS * x.shape[-1]:
        from gpu_kernels.silu_mul_quant import silu_mul_quant
        q, scale = silu_mul_quant(x, spec.kind)
        return QuantizedInput(q, scale, x.dtype, x.shape[:-1])
    return quantize_input(silu_and_mul(x), spec)


class SiluAndMul(nn.Module):
    """Gated SiLU over a fused gate_up projection output. `output_quant` (set by
    `wire_input_quant` when down_proj quantizes its input per token) makes forward return that
    quantized input, a `QuantizedInput`."""

    def __init__(self):
        super().__init__()
        self.output_quant: Optional[InputQuant] = None

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, QuantizedInput]:
        if self.output_quant is not None:
            return silu_and_mul_quantized(x, self.output_quant)
        return silu_and_mul(x)


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    # GPT-2's tanh approximation, written as HF's NewGELUActivation computes it.
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": _gelu_new,
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


class Activation(nn.Module):
    """An elementwise activation chosen by its HF config name."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.fn = get_act_fn(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def get_act_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function HF calls `name`; ValueError for unknown names."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation '{name}' (supported: {sorted(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]
