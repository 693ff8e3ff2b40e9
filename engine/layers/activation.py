"""Activations by HF name, and the gated SiLU of Llama-family MLPs.

`silu_and_mul` is the function a fused kernel can replace.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2*d] = [gate | up] -> silu(gate) * up, [..., d]."""
    if x.is_cuda and x.dtype != torch.float32:
        from gpu_kernels.activation import silu_and_mul as fused_silu_and_mul
        return fused_silu_and_mul(x)
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


class SiluAndMul(nn.Module):
    """Gated SiLU over a fused gate_up projection output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
