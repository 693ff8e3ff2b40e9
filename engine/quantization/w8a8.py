"""W8A8 linear methods for compressed-tensors checkpoints (as llmcompressor / AutoRound write
them), one weight scale per output channel and one activation scale per token:

- `int-quantized`: int8 `weight` [N, K] + `weight_scale` [N, 1]; activations quantized at run time
  to int8 (symmetric, absmax / 127, round half to even). CUDA: the fused `quant_int8_rows`, then
  the Triton `scaled_gemm` (int32 accumulation, both scales in its epilogue; H200, 32 Llama-3-8B
  layers: 3.0 / 5.2 / 23 ms at M = 1 / 256 / 2048 against `torch._int_mm` plus a torch epilogue's
  6.4 / 11.7 / 62); CPU: the same integer products summed exactly in float64 (reference).
- `float-quantized`: float8_e4m3fn `weight` [N, K] + `weight_scale` [N, 1] (or one per-tensor
  scale per fused shard); activations quantized dynamically per token (absmax / 448), or with the
  checkpoint's static per-tensor `input_scale`. CUDA: `torch._scaled_mm`; CPU: fp32 emulation.

Both methods with dynamic activation scales advertise the per-token quantization
(`input_quant`): in wired models (engine/quantization/input_quant.py) the RMSNorm / SiLU-and-mul
in front of qkv_proj, gate_up_proj and down_proj emit the quantized input themselves (fused
kernels on CUDA), and `apply` receives a `QuantizedInput`; o_proj quantizes here as before.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from engine.quantization.base import LinearMethod, set_param_attrs
from engine.quantization.fp8 import FP8, FP8_INPUT, FP8_MAX, check_fp8_gpu, fp8_linear
from engine.quantization.input_quant import InputQuant, QuantizedInput, as_quantized

INT8_INPUT = InputQuant("int8")


def _param(shape, dtype, **attrs) -> nn.Parameter:
    return set_param_attrs(nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False),
                           **attrs)


class Int8W8A8LinearMethod(LinearMethod):
    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int],
                       params_dtype: torch.dtype) -> None:
        n = sum(output_sizes)
        layer.weight = _param((n, input_size), torch.int8, output_dim=0, input_dim=1)
        layer.weight_scale = _param((n, 1), torch.float32, output_dim=0)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        layer.weight_scale_flat = layer.weight_scale.data.reshape(-1).float().contiguous()

    def input_quant(self, layer: nn.Module) -> Optional[InputQuant]:
        return INT8_INPUT

    def apply(self, layer: nn.Module, x: Union[torch.Tensor, QuantizedInput],
              bias: Optional[torch.Tensor]) -> torch.Tensor:
        xq, xs, dtype, lead = as_quantized(x, INT8_INPUT)
        if xq.is_cuda:  # one GEMM with both scales in its epilogue
            from gpu_kernels.scaled_gemm import scaled_gemm
            out = scaled_gemm(xq, layer.weight, xs, layer.weight_scale_flat, bias,
                              out_dtype=dtype)
            return out.reshape(*lead, -1)
        acc = (xq.double() @ layer.weight.double().t()).float()
        out = acc * xs[:, None] * layer.weight_scale_flat
        if bias is not None:
            out = out + bias.float()
        return out.to(dtype).reshape(*lead, -1)

    def init_dummy(self, layer: nn.Module, generator: torch.Generator) -> None:
        layer.weight.data.copy_(torch.randint(-127, 128, layer.weight.shape, generator=generator,
                                              device=layer.weight.device))
        layer.weight_scale.data.fill_(0.02 * 3 ** 0.5 / 127)  # uniform q -> std 0.02


class Fp8W8A8LinearMethod(LinearMethod):
    def __init__(self, per_tensor_weight: bool, static_input: bool):
        self.per_tensor, self.static_input = per_tensor_weight, static_input

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int],
                       params_dtype: torch.dtype) -> None:
        n, shards = sum(output_sizes), len(output_sizes)
        layer.weight = _param((n, input_size), FP8, output_dim=0, input_dim=1)
        if self.per_tensor:
            layer.weight_scale = _param((shards,), torch.float32, per_shard=True)
        else:
            layer.weight_scale = _param((n, 1), torch.float32, output_dim=0)
        if self.static_input:
            layer.input_scale = _param((shards,), torch.float32, per_shard=True)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        check_fp8_gpu(layer.weight.device)
        scale = layer.weight_scale.data.float()
        if self.per_tensor:  # expand each shard's scalar over its rows
            scale = torch.repeat_interleave(scale, torch.tensor(layer.output_sizes,
                                                                device=scale.device))
        layer.w_scale = scale.reshape(-1).contiguous()
        if self.static_input:
            # Fused shards share one input: the largest scale keeps every shard in range.
            layer.x_scale = layer.input_scale.data.float().max().reshape(1)

    def input_quant(self, layer: nn.Module) -> Optional[InputQuant]:
        return None if self.static_input else FP8_INPUT

    def apply(self, layer: nn.Module, x: Union[torch.Tensor, QuantizedInput],
              bias: Optional[torch.Tensor]) -> torch.Tensor:
        x_scale = layer.x_scale if self.static_input else None
        return fp8_linear(x, layer.weight, layer.w_scale, bias, x_scale)

    def init_dummy(self, layer: nn.Module, generator: torch.Generator) -> None:
        w = torch.empty(layer.weight.shape, device=layer.weight.device).normal_(
            0.0, 1.0, generator=generator)
        layer.weight.data.copy_((w * 100).clamp(-FP8_MAX, FP8_MAX).to(FP8))
        layer.weight_scale.data.fill_(0.02 / 100)
        if self.static_input:
            layer.input_scale.data.fill_(1.0 / FP8_MAX * 4)

    def weight_bytes(self, layer: nn.Module) -> int:
        return layer.weight.numel() + layer.w_scale.numel() * 4
