"""Dense weights: a [out, in] parameter applied with F.linear (bit-identical to nn.Linear), or, for
decode-sized batches on a GPU whose tuned table says it is faster for the shape, the Triton
`skinny_gemm` (gpu_kernels/skinny_gemm.py; H200 table in gpu_kernels/tuned/)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from engine.quantization.base import LinearMethod, set_param_attrs

DUMMY_STD = 0.02


class UnquantizedLinearMethod(LinearMethod):
    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int],
                       params_dtype: torch.dtype) -> None:
        weight = nn.Parameter(torch.empty(sum(output_sizes), input_size, dtype=params_dtype),
                              requires_grad=False)
        layer.weight = set_param_attrs(weight, output_dim=0, input_dim=1)

    def apply(self, layer: nn.Module, x: torch.Tensor,
              bias: Optional[torch.Tensor]) -> torch.Tensor:
        return dense_linear(x, layer.weight, bias)

    def init_dummy(self, layer: nn.Module, generator: torch.Generator) -> None:
        layer.weight.data.normal_(0.0, DUMMY_STD, generator=generator)


def dense_linear(x: torch.Tensor, weight: torch.Tensor,
                 bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear, except where the skinny GEMM's tuned table has a (non-library) entry for this
    many rows and this weight shape (CUDA, 16-bit, at most 16 rows)."""
    if x.is_cuda and x.dim() == 2 and x.shape[0] <= 16 and x.dtype != torch.float32:
        from gpu_kernels.tuned_configs import shared_tuned_config

        n, k = weight.shape
        cfg = shared_tuned_config("skinny_gemm", x.device, x.shape[0], n, k, 16, 0)
        if (cfg and not cfg.get("library") and x.stride(-1) == 1 and weight.stride(-1) == 1
                and (bias is None or bias.dtype == x.dtype)):
            from gpu_kernels.skinny_gemm import skinny_gemm
            return skinny_gemm(x, weight, bias, config=cfg)
    return F.linear(x, weight, bias)
