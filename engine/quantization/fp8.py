"""FP8 W8A8 quantized at load (`quantization="fp8"` on a dense checkpoint): each linear's weight
becomes float8_e4m3fn with one fp32 scale per output channel (absmax / 448); activations are
quantized per token at run time (dynamic absmax scale). CUDA (Hopper / Ada, compute capability
>= 8.9; older GPUs fail at load) runs the Triton `scaled_gemm` for decode-sized batches and
`torch._scaled_mm` with row-wise scales above; the CPU path
emulates the same arithmetic in fp32 (quantize, dequantize, matmul) and is the reference.
The method advertises its per-token input quantization (`input_quant`): in models that declare
the fusion (Llama family) the RMSNorm / SiLU-and-mul feeding qkv_proj, gate_up_proj and down_proj
emit the quantized input themselves (one fused kernel on CUDA, engine/quantization/input_quant.py)
and `fp8_linear` receives a `QuantizedInput`; o_proj and other models quantize here, with the
same bits.

HF `fp8` checkpoints (block-wise or per-tensor scales) load through `fp8_block.py` / `w8a8.py`;
compressed-tensors FP8 checkpoints through `compressed_tensors.py`.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from engine.quantization.base import LinearMethod, QuantizationConfig
from engine.quantization.input_quant import InputQuant, QuantizedInput, as_quantized
from engine.quantization.unquantized import UnquantizedLinearMethod
from gpu_kernels.quant_fp8_rows import quant_fp8_rows_ref

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
MIN_SCALE = 1e-12
# Up to this many rows CUDA runs the Triton `scaled_gemm` (narrow tiles that stream the weight);
# above, cuBLAS' row-wise-scaled `torch._scaled_mm`, which uses one 128 x 128 tile for any M
# (H200 sweep, benchmarks/kernel_bench/scaled_gemm.py, 32 Llama-3-8B layers: M = 1 3.1 ms vs
# 4.5 ms; M = 64 4.2 vs 4.0; M = 256 5.9 vs 4.5).
TRITON_MAX_ROWS = 16
FP8_INPUT = InputQuant("fp8")


def quantize_fp8_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row absmax scaling: (t / scale) as e4m3 [R, C], fp32 scale [R] (torch ops)."""
    return quant_fp8_rows_ref(t)


def check_fp8_gpu(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        raise ValueError(f"fp8: GPU {torch.cuda.get_device_name(device)} has no FP8 support "
                         "(needs compute capability 8.9+: Ada, Hopper or newer)")


def fp8_linear(x: Union[torch.Tensor, QuantizedInput], w_fp8: torch.Tensor,
               w_scale: torch.Tensor, bias: Optional[torch.Tensor],
               x_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [..., K] @ (w_fp8 [N, K] * w_scale [N])^T with x quantized to e4m3 per token (or with
    the static per-tensor `x_scale`); x may arrive already quantized per token (QuantizedInput)."""
    if x_scale is None:
        xq, xs, dtype, lead = as_quantized(x, FP8_INPUT)
    else:
        if isinstance(x, QuantizedInput):
            raise TypeError("fp8_linear: a static input scale needs the unquantized input")
        dtype, lead = x.dtype, x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        xq = (x2.float() / x_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)
        xs = x_scale.expand(x2.shape[0])
    if xq.is_cuda and xq.shape[0] <= TRITON_MAX_ROWS:
        from gpu_kernels.scaled_gemm import scaled_gemm
        xs = xs.reshape(-1).float().contiguous()
        out = scaled_gemm(xq, w_fp8, xs, w_scale, bias, out_dtype=dtype)
        return out.reshape(*lead, out.shape[-1])
    if xq.is_cuda:
        out = torch._scaled_mm(xq, w_fp8.t(), scale_a=xs.reshape(-1, 1).contiguous(),
                               scale_b=w_scale.reshape(1, -1),
                               out_dtype=torch.float16 if dtype == torch.float16
                               else torch.bfloat16)  # row-wise scaling: 16-bit output
    else:
        out = F.linear(xq.float() * xs[:, None], w_fp8.float() * w_scale[:, None])
    if bias is not None:
        out = out + bias.float()
    return out.to(dtype).reshape(*lead, out.shape[-1])


class Fp8Config(QuantizationConfig):
    name = "fp8"

    def __init__(self, method_factory=None, summary: str = ""):
        self.method_factory = method_factory or Fp8DynamicLinearMethod
        self.summary = summary or ("w8a8 e4m3 quantized at load, per-channel weight / per-token "
                                   "dynamic activation scales")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Fp8Config":
        """{} (requested with quantization='fp8'): quantize a dense checkpoint at load. HF `fp8`
        checkpoints: block-wise (`weight_block_size`, dynamic activations) or per-tensor
        (`weight_scale`, plus `input_scale` when activation_scheme is static)."""
        if not config:
            return cls()
        scheme = config.get("activation_scheme", "dynamic")
        if scheme not in ("dynamic", "static"):
            raise ValueError(f"fp8: activation_scheme {scheme!r} is not supported")
        block = config.get("weight_block_size")
        if block:
            from engine.quantization.fp8_block import Fp8BlockLinearMethod
            if scheme != "dynamic" or len(block) != 2:
                raise ValueError(f"fp8: block-wise checkpoints need dynamic activations and a "
                                 f"[block_n, block_k] weight_block_size, got {config}")
            bn, bk = int(block[0]), int(block[1])
            return cls(partial(Fp8BlockLinearMethod, (bn, bk), "weight_scale_inv"),
                       f"w8a8 e4m3 checkpoint, {bn}x{bk} weight blocks / per-token-group "
                       "activation scales")
        from engine.quantization.w8a8 import Fp8W8A8LinearMethod
        static = scheme == "static"
        return cls(partial(Fp8W8A8LinearMethod, per_tensor_weight=True,
                           static_input=static),
                   f"w8a8 e4m3 checkpoint, per-tensor weight / {scheme} activation scales")

    def get_linear_method(self, prefixes: list[str]) -> Optional[LinearMethod]:
        return self.method_factory()

    def describe(self) -> str:
        return f"fp8 ({self.summary})"


class Fp8DynamicLinearMethod(UnquantizedLinearMethod):
    """Loads the dense weight like the unquantized method, then quantizes it once."""

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        w = layer.weight.data
        check_fp8_gpu(w.device)
        q, scale = quantize_fp8_rows(w)
        del layer._parameters["weight"]
        layer.register_buffer("w_fp8", q, persistent=False)  # [N, K] row-major
        layer.register_buffer("w_scale", scale, persistent=False)

    def input_quant(self, layer: nn.Module) -> Optional[InputQuant]:
        return FP8_INPUT

    def apply(self, layer: nn.Module, x: Union[torch.Tensor, QuantizedInput],
              bias: Optional[torch.Tensor]) -> torch.Tensor:
        return fp8_linear(x, layer.w_fp8, layer.w_scale, bias)

    def weight_bytes(self, layer: nn.Module) -> int:
        return layer.w_fp8.numel() + layer.w_scale.numel() * 4
