"""GPTQ checkpoints (`quant_method: gptq`, as GPTQModel, AutoGPTQ and AutoRound's GPTQ export
write them): per linear `qweight` int32 [K / pf, N] packed along K, `qzeros` int32 [G, N / pf]
packed along N, `scales` [G, N], `g_idx` int32 [K] (group of each input row; a permutation of
the groups under `desc_act`). Format v1 ("gptq") stores zero - 1, v2 ("gptq_v2") the zero itself.
Bits 4 and 8, group size -1 or any positive size, symmetric or not.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from engine.quantization.base import (LinearMethod, QuantizationConfig, pack_int32,
                                      set_param_attrs, unpack_int32)
from engine.quantization.weight_only import (WeightOnlyParams, apply_weight_only,
                                             canonical_bytes, drop_params, dummy_int_weight,
                                             to_canonical)

CHECKPOINT_PARAMS = ["qweight", "qzeros", "scales", "g_idx"]


class GPTQConfig(QuantizationConfig):
    name = "gptq"

    def __init__(self, bits: int, group_size: int, desc_act: bool, sym: bool,
                 zero_offset: int, lm_head: bool = False, skip: Optional[list[str]] = None):
        self.skip = list(skip or [])
        self.params = WeightOnlyParams(bits, group_size)
        self.desc_act, self.sym, self.zero_offset = desc_act, sym, zero_offset
        if lm_head:
            raise ValueError("gptq: quantized lm_head is not supported")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "GPTQConfig":
        fmt = config.get("checkpoint_format", "gptq")
        if fmt not in ("gptq", "gptq_v2"):
            raise ValueError(f"gptq: checkpoint_format {fmt!r} is not supported (gptq, gptq_v2)")
        return cls(int(config.get("bits", 4)), int(config.get("group_size", 128)),
                   bool(config.get("desc_act", False)), bool(config.get("sym", True)),
                   1 if fmt == "gptq" else 0, bool(config.get("lm_head", False)),
                   config.get("modules_to_not_convert"))

    def get_linear_method(self, prefixes: list[str]) -> Optional[LinearMethod]:
        from engine.quantization.awq import is_skipped
        if is_skipped(prefixes, self.skip):
            return None
        return GPTQLinearMethod(self.params, self.zero_offset)

    def describe(self) -> str:
        p = self.params
        return (f"gptq (w{p.bits}a16, group {p.group_size}, desc_act {self.desc_act}, "
                f"sym {self.sym})")


class GPTQLinearMethod(LinearMethod):
    """GPTQ layout in, canonical layout (weight_only.py) after loading."""

    def __init__(self, params: WeightOnlyParams, zero_offset: int):
        self.p, self.zero_offset = params, zero_offset

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int],
                       params_dtype: torch.dtype) -> None:
        pf, n, k = self.p.pack_factor, sum(output_sizes), input_size
        if k % pf or any(s % pf for s in output_sizes):
            raise ValueError(f"gptq: '{layer.prefix}' sizes (in {k}, out {output_sizes}) must be "
                             f"multiples of {pf}")
        g = self.p.num_groups(k)

        def param(shape, dtype, **attrs):
            return set_param_attrs(nn.Parameter(torch.empty(shape, dtype=dtype),
                                                requires_grad=False), **attrs)

        layer.qweight = param((k // pf, n), torch.int32, input_dim=0, output_dim=1,
                              packed_dim=0, pack_factor=pf)
        layer.qzeros = param((g, n // pf), torch.int32, input_dim=0, output_dim=1,
                             packed_dim=1, pack_factor=pf)
        layer.scales = param((g, n), params_dtype, input_dim=0, output_dim=1)
        layer.g_idx = param((k,), torch.int32, input_dim=0, optional=True,
                            group_index_size=self.p.group(k))
        layer.g_idx.data.copy_(torch.arange(k) // self.p.group(k))

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        bits = self.p.bits
        q = unpack_int32(layer.qweight.data, bits, dim=0)
        zeros = unpack_int32(layer.qzeros.data, bits, dim=1) + self.zero_offset
        g_idx = layer.g_idx.data
        if int(g_idx.min()) < 0 or int(g_idx.max()) >= zeros.shape[0]:
            raise ValueError(f"'{layer.prefix}.g_idx': group index outside [0, {zeros.shape[0]})")
        to_canonical(layer, q, zeros, layer.scales.data, self.p, g_idx)
        drop_params(layer, CHECKPOINT_PARAMS)

    def apply(self, layer: nn.Module, x: torch.Tensor,
              bias: Optional[torch.Tensor]) -> torch.Tensor:
        return apply_weight_only(layer, x, bias)

    def init_dummy(self, layer: nn.Module, generator: torch.Generator) -> None:
        k, n = layer.input_size, layer.output_size
        q, zeros, scales = dummy_int_weight(k, n, self.p, generator, layer.qweight.device,
                                            layer.scales.dtype)
        layer.qweight.data.copy_(pack_int32(q, self.p.bits, dim=0))
        layer.qzeros.data.copy_(pack_int32(zeros - self.zero_offset, self.p.bits, dim=1))
        layer.scales.data.copy_(scales)

    def weight_bytes(self, layer: nn.Module) -> int:
        return canonical_bytes(layer)
