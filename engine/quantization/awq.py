"""AWQ checkpoints (`quant_method: awq`, GEMM packing, as AutoAWQ and AutoRound's AWQ export write
them): `qweight` int32 [K, N / 8] and `qzeros` int32 [G, N / 8] packed along N in AWQ's
interleaved order (nibble j of a word holds column AWQ_COLUMN_OF_NIBBLE[j] of its 8), `scales`
[G, N]; w = (q - zero) * scale. 4 bits.
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

# Packing writes column c of each group of 8 to nibble AWQ_NIBBLE_OF_COLUMN[c].
AWQ_NIBBLE_OF_COLUMN = (0, 4, 1, 5, 2, 6, 3, 7)
AWQ_COLUMN_OF_NIBBLE = (0, 2, 4, 6, 1, 3, 5, 7)
CHECKPOINT_PARAMS = ["qweight", "qzeros", "scales"]


def awq_unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """[R, N / pf] AWQ-packed int32 -> [R, N] values in column order."""
    vals = unpack_int32(packed, bits, dim=1)
    pf = 32 // bits
    order = torch.tensor(AWQ_NIBBLE_OF_COLUMN[:pf] if pf == 8 else range(pf), device=vals.device)
    return vals.view(vals.shape[0], -1, pf).index_select(2, order).reshape(vals.shape)


def awq_pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    pf = 32 // bits
    order = torch.tensor(AWQ_COLUMN_OF_NIBBLE[:pf] if pf == 8 else range(pf),
                         device=values.device)
    inter = values.view(values.shape[0], -1, pf).index_select(2, order).reshape(values.shape)
    return pack_int32(inter, bits, dim=1)


class AWQConfig(QuantizationConfig):
    name = "awq"

    def __init__(self, bits: int, group_size: int, zero_point: bool,
                 modules_to_not_convert: list[str]):
        if bits != 4:
            raise ValueError(f"awq: only 4-bit checkpoints are supported, got {bits}")
        self.params = WeightOnlyParams(bits, group_size)
        self.zero_point = zero_point
        self.skip = list(modules_to_not_convert or [])

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "AWQConfig":
        version = str(config.get("version", "gemm")).lower()
        if version != "gemm":
            raise ValueError(f"awq: version {version!r} is not supported (gemm)")
        return cls(int(config.get("bits", config.get("w_bit", 4))),
                   int(config.get("group_size", config.get("q_group_size", 128))),
                   bool(config.get("zero_point", True)),
                   config.get("modules_to_not_convert") or [])

    def get_linear_method(self, prefixes: list[str]) -> Optional[LinearMethod]:
        if is_skipped(prefixes, self.skip):
            return None
        return AWQLinearMethod(self.params, self.zero_point)

    def describe(self) -> str:
        return f"awq (w4a16, group {self.params.group_size})"


def is_skipped(prefixes: list[str], skip: list[str]) -> bool:
    """True when the layer's checkpoint modules are listed as not converted (all or none)."""
    hits = [any(s and (p == s or p.endswith("." + s) or ("." + s + ".") in p + ".")
                for s in skip) for p in prefixes]
    if any(hits) and not all(hits):
        raise ValueError(f"quantization: fused modules {prefixes} are only partly quantized")
    return bool(hits) and all(hits)


class AWQLinearMethod(LinearMethod):
    def __init__(self, params: WeightOnlyParams, zero_point: bool):
        self.p, self.zero_point = params, zero_point

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int],
                       params_dtype: torch.dtype) -> None:
        pf, n, k = self.p.pack_factor, sum(output_sizes), input_size
        if any(s % pf for s in output_sizes):
            raise ValueError(f"awq: '{layer.prefix}' output sizes {output_sizes} must be "
                             f"multiples of {pf}")
        g = self.p.num_groups(k)

        def param(shape, dtype, **attrs):
            return set_param_attrs(nn.Parameter(torch.empty(shape, dtype=dtype),
                                                requires_grad=False), **attrs)

        layer.qweight = param((k, n // pf), torch.int32, input_dim=0, output_dim=1,
                              packed_dim=1, pack_factor=pf)
        layer.qzeros = param((g, n // pf), torch.int32, input_dim=0, output_dim=1,
                             packed_dim=1, pack_factor=pf, optional=not self.zero_point)
        layer.scales = param((g, n), params_dtype, input_dim=0, output_dim=1)
        if not self.zero_point:
            layer.qzeros.data.copy_(awq_pack(torch.full((g, n), 1 << (self.p.bits - 1)),
                                             self.p.bits))

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        q = awq_unpack(layer.qweight.data, self.p.bits)
        zeros = awq_unpack(layer.qzeros.data, self.p.bits)
        to_canonical(layer, q, zeros, layer.scales.data, self.p)
        drop_params(layer, CHECKPOINT_PARAMS)

    def apply(self, layer: nn.Module, x: torch.Tensor,
              bias: Optional[torch.Tensor]) -> torch.Tensor:
        return apply_weight_only(layer, x, bias)

    def init_dummy(self, layer: nn.Module, generator: torch.Generator) -> None:
        q, zeros, scales = dummy_int_weight(layer.input_size, layer.output_size, self.p,
                                            generator, layer.qweight.device, layer.scales.dtype)
        layer.qweight.data.copy_(awq_pack(q, self.p.bits))
        layer.qzeros.data.copy_(awq_pack(zeros, self.p.bits))
        layer.scales.data.copy_(scales)

    def weight_bytes(self, layer: nn.Module) -> int:
        return canonical_bytes(layer)
