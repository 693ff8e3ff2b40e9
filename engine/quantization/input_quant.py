"""Input-quantization fusion: a W8A8 linear layer whose input is quantized per token (dynamic
absmax scale) lets the module producing that input (RMSNorm, SiLU-and-mul) emit it already
quantized, saving one kernel launch and a round trip of the activation per linear.

- `InputQuant`: what a linear method wants for its input (`LinearMethod.input_quant`).
- `QuantizedInput`: the quantized activation a producer hands the linear instead of a tensor.
- `quantize_input`: the unfused quantization (kernel on CUDA, torch reference elsewhere), the one
  entry point both the linear methods and the producers' unfused paths use, so fused and
  unfused results are the same bits.
- `wire_input_quant`: after loading, sets each declared producer's `output_quant` from its
  consumer's method. A decoder layer class declares its pairs in `input_quant_fusions`, e.g.
  `(("input_layernorm", "self_attn.qkv_proj"), ...)` (submodule paths); models without the
  attribute are left alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import nn

from gpu_kernels.quant_fp8_rows import quant_fp8_rows_ref
from gpu_kernels.quant_int8_rows import quant_int8_rows_ref
from gpu_kernels.row_quant import quant_rows

QuantKind = Literal["fp8", "int8"]
KINDS = ("fp8", "int8")


@dataclass(frozen=True)
class InputQuant:
    """Dynamic per-token absmax quantization of a layer's input to e4m3 ("fp8") or int8."""

    kind: QuantKind

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"InputQuant kind must be one of {KINDS}, got {self.kind!r}")


class QuantizedInput(NamedTuple):
    """A linear layer's input, quantized per row: the activation x [*lead_shape, K] as
    q [R, K] (e4m3 / int8, R = prod(lead_shape)) and scale [R] fp32, x ~= q * scale[:, None].
    `dtype` is x's dtype: the layer's output dtype."""

    q: torch.Tensor
    scale: torch.Tensor
    dtype: torch.dtype
    lead_shape: torch.Size


def quantize_input(x: torch.Tensor, spec: InputQuant) -> QuantizedInput:
    """Quantize x [..., K] as `spec` says, unfused: the Triton kernel on CUDA, the torch
    reference elsewhere."""
    x2 = x.reshape(-1, x.shape[-1])
    if x.is_cuda:  # one pass instead of ~8 torch ops
        q, scale = quant_rows(x2.contiguous(), spec.kind)
    else:
        q, scale = (quant_fp8_rows_ref if spec.kind == "fp8" else quant_int8_rows_ref)(x2)
    return QuantizedInput(q, scale, x.dtype, x.shape[:-1])


def as_quantized(x: "torch.Tensor | QuantizedInput", spec: InputQuant) -> QuantizedInput:
    """x itself when a producer already quantized it, else `quantize_input(x, spec)`."""
    return x if isinstance(x, QuantizedInput) else quantize_input(x, spec)


def wire_input_quant(model: nn.Module) -> None:
    """Set `producer.output_quant = consumer.quant_method.input_quant(consumer)` for every pair a
    module's class declares in `input_quant_fusions` (None, for an unquantized or differently
    quantized consumer, leaves the producer unfused). Call once the weights are processed."""
    for module in model.modules():
        for producer_name, consumer_name in getattr(type(module), "input_quant_fusions", ()):
            producer = module.get_submodule(producer_name)
            consumer = module.get_submodule(consumer_name)
            if not hasattr(producer, "output_quant"):
                raise TypeError(f"{type(module).__name__}.{producer_name} "
                                f"({type(producer).__name__}) cannot emit a quantized output")
            producer.output_quant = consumer.quant_method.input_quant(consumer)
