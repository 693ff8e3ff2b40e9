"""Dense weights: a [out, in] parameter applied with F.linear (bit-identical to nn.Linear)."""
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
        return F.linear(x, layer.weight, bias)

    def init_dummy(self, layer: nn.Module, generator: torch.Generator) -> None:
        layer.weight.data.normal_(0.0, DUMMY_STD, generator=generator)
