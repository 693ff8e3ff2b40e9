"""Block-wise FP8 W8A8 (DeepSeek-V3 style): e4m3 `weight` [N, K] with one fp32 scale per
[block_n, block_k] tile (`weight_scale_inv` in HF `fp8` checkpoints with `weight_block_size`,
`weight_scale` in compressed-tensors `block` strategy); activations quantized dynamically per
token and per group of block_k input features.

Both devices run the emulation (quantize activations per group, dequantize, one matmul): exact
to the scheme, but on CUDA it reads the fp8 weight and widens it every step rather than feeding
a block-scaled FP8 GEMM.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from engine.quantization.base import LinearMethod, set_param_attrs
from engine.quantization.fp8 import FP8, FP8_MAX, MIN_SCALE, check_fp8_gpu


def quantize_fp8_groups(x: torch.Tensor, group: int) -> torch.Tensor:
    """x [M, K] rounded through e4m3 with one absmax scale per (row, group of K): the
    dequantized values, fp32."""
    m, k = x.shape
    pad = (-k) % group
    xf = F.pad(x.float(), (0, pad)).view(m, -1, group)
    scale = (xf.abs().amax(-1, keepdim=True) / FP8_MAX).clamp(min=MIN_SCALE)
    q = (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).float() * scale
    return q.view(m, -1)[:, :k]


def dequantize_blocks(w: torch.Tensor, scale: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    n, k = w.shape
    s = scale.float().repeat_interleave(block[0], 0)[:n].repeat_interleave(block[1], 1)[:, :k]
    return w.float() * s


class Fp8BlockLinearMethod(LinearMethod):
    def __init__(self, block: tuple[int, int], scale_name: str):
        self.block, self.scale_name = block, scale_name

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int],
                       params_dtype: torch.dtype) -> None:
        bn, bk = self.block
        n = sum(output_sizes)
        layer.weight = set_param_attrs(
            nn.Parameter(torch.empty(n, input_size, dtype=FP8), requires_grad=False),
            output_dim=0, input_dim=1)
        # Fused shards must start on block rows; pack_factor makes the loader count in blocks.
        scale = nn.Parameter(torch.empty(-(-n // bn), -(-input_size // bk),
                                         dtype=torch.float32), requires_grad=False)
        set_param_attrs(scale, output_dim=0, input_dim=1,
                        packed_dim=0 if len(output_sizes) > 1 else None, pack_factor=bn)
        setattr(layer, self.scale_name, scale)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        check_fp8_gpu(layer.weight.device)

    def apply(self, layer: nn.Module, x: torch.Tensor,
              bias: Optional[torch.Tensor]) -> torch.Tensor:
        shape = x.shape
        xd = quantize_fp8_groups(x.reshape(-1, shape[-1]), self.block[1])
        wd = dequantize_blocks(layer.weight, getattr(layer, self.scale_name), self.block)
        out = F.linear(xd, wd, None if bias is None else bias.float())
        return out.to(x.dtype).reshape(*shape[:-1], out.shape[-1])

    def init_dummy(self, layer: nn.Module, generator: torch.Generator) -> None:
        w = torch.empty(layer.weight.shape, device=layer.weight.device).normal_(
            0.0, 1.0, generator=generator)
        layer.weight.data.copy_((w * 100).clamp(-FP8_MAX, FP8_MAX).to(FP8))
        getattr(layer, self.scale_name).data.fill_(0.02 / 100)

    def weight_bytes(self, layer: nn.Module) -> int:
        s = getattr(layer, self.scale_name)
        return layer.weight.numel() + s.numel() * 4
