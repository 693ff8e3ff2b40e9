"""compressed-tensors checkpoints (`quant_method: compressed-tensors`, as llmcompressor and
AutoRound's llm_compressor export write them), `pack-quantized` format: integer weight-only
W4A16 / W8A16 with group or channel strategy, symmetric or not.

Per linear: `weight_packed` int32 [N, ceil(K * bits / 32)] (values + 2^(bits-1), packed along K,
lowest bits first), `weight_scale` [N, G], `weight_zero_point` int32 [ceil(N / pf), G] packed
along N (asymmetric only), `weight_shape` [2] (N, K); w = (q - zero) * scale. `ignore` lists
modules left dense (names or `re:` patterns). Other formats and activation quantization are
rejected at load, naming what was found.
"""
from __future__ import annotations

import re
from functools import partial
from typing import Any, Callable, Optional

import torch
from torch import nn

from engine.quantization.base import (LinearMethod, QuantizationConfig, pack_int32,
                                      set_param_attrs, unpack_int32)
from engine.quantization.weight_only import (WeightOnlyParams, apply_weight_only,
                                             canonical_bytes, drop_params, dummy_int_weight,
                                             to_canonical)

CHECKPOINT_PARAMS = ["weight_packed", "weight_scale", "weight_zero_point", "weight_shape"]


class CompressedTensorsConfig(QuantizationConfig):
    name = "compressed-tensors"

    def __init__(self, method_factory: Callable[[], LinearMethod], summary: str,
                 ignore: list[str]):
        self.method_factory, self.summary, self.ignore = method_factory, summary, ignore

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "CompressedTensorsConfig":
        groups = config.get("config_groups") or {}
        if len(groups) != 1:
            raise ValueError(f"compressed-tensors: exactly one config group is supported, got "
                             f"{len(groups)}")
        group = next(iter(groups.values()))
        fmt = group.get("format") or config.get("format")
        targets = group.get("targets") or []
        if targets != ["Linear"]:
            raise ValueError(f"compressed-tensors: targets {targets} are not supported (Linear)")
        if group.get("output_activations"):
            raise ValueError("compressed-tensors: output activation quantization is not supported")
        if config.get("kv_cache_scheme"):
            raise ValueError("compressed-tensors: kv_cache_scheme is not supported")
        w = group.get("weights") or {}
        act = group.get("input_activations")
        ignore = list(config.get("ignore") or [])
        if fmt == "pack-quantized":
            return cls(*_weight_only(w, act), ignore)
        if fmt == "int-quantized":
            return cls(*_int8_w8a8(w, act), ignore)
        if fmt in ("float-quantized", "naive-quantized") and w.get("type") == "float":
            return cls(*_fp8_w8a8(w, act), ignore)
        raise ValueError(f"compressed-tensors: format {fmt!r} with weights {w} is not supported "
                         f"(pack-quantized, int-quantized, float-quantized)")

    def _ignored(self, prefix: str) -> bool:
        for pattern in self.ignore:
            if pattern.startswith("re:"):
                if re.match(pattern[3:], prefix):
                    return True
            elif prefix == pattern or prefix.endswith("." + pattern):
                return True
        return False

    def get_linear_method(self, prefixes: list[str]) -> Optional[LinearMethod]:
        hits = [self._ignored(p) for p in prefixes]
        if any(hits) and not all(hits):
            raise ValueError(f"compressed-tensors: fused modules {prefixes} are only partly "
                             f"ignored")
        if all(hits):
            return None
        return self.method_factory()

    def describe(self) -> str:
        return f"compressed-tensors ({self.summary})"


def _weight_only(w: dict, act: Optional[dict]) -> tuple[Callable[[], LinearMethod], str]:
    if act:
        raise ValueError("compressed-tensors: pack-quantized with activation quantization is "
                         "not supported")
    if w.get("type", "int") != "int" or w.get("dynamic"):
        raise ValueError(f"compressed-tensors: weights {w} are not static int weights")
    strategy = w.get("strategy")
    if strategy == "group":
        group_size = int(w["group_size"])
    elif strategy == "channel":
        group_size = -1
    else:
        raise ValueError(f"compressed-tensors: weight strategy {strategy!r} is not supported "
                         f"(group, channel)")
    params = WeightOnlyParams(int(w.get("num_bits", 4)), group_size)
    sym = bool(w.get("symmetric", True))
    return (partial(PackQuantizedLinearMethod, params, sym),
            f"pack-quantized w{params.bits}a16, group {group_size}")


def _int8_w8a8(w: dict, act: Optional[dict]) -> tuple[Callable[[], LinearMethod], str]:
    from engine.quantization.w8a8 import Int8W8A8LinearMethod
    ok_w = (w.get("type") == "int" and int(w.get("num_bits", 0)) == 8 and w.get("symmetric")
            and w.get("strategy") == "channel")
    ok_a = (act and act.get("type") == "int" and int(act.get("num_bits", 0)) == 8
            and act.get("dynamic") and act.get("symmetric") and act.get("strategy") == "token")
    if not (ok_w and ok_a):
        raise ValueError("compressed-tensors: int-quantized supports int8 symmetric per-channel "
                         f"weights with dynamic per-token int8 activations; got weights {w}, "
                         f"activations {act}")
    return Int8W8A8LinearMethod, "int8 w8a8, per-channel / dynamic per-token"


def _fp8_w8a8(w: dict, act: Optional[dict]) -> tuple[Callable[[], LinearMethod], str]:
    from engine.quantization.w8a8 import Fp8W8A8LinearMethod
    strategy = w.get("strategy")
    if strategy == "block":
        from engine.quantization.fp8_block import Fp8BlockLinearMethod
        block = w.get("block_structure") or []
        if (len(block) != 2 or not act or not act.get("dynamic")
                or act.get("strategy") != "group" or act.get("group_size") != block[1]):
            raise ValueError(f"compressed-tensors: block fp8 needs [bn, bk] blocks and dynamic "
                             f"per-token groups of bk activations, got {w}, {act}")
        bn, bk = int(block[0]), int(block[1])
        return (partial(Fp8BlockLinearMethod, (bn, bk), "weight_scale"),
                f"fp8 w8a8, {bn}x{bk} weight blocks / per-token-group activation scales")
    if int(w.get("num_bits", 0)) != 8 or strategy not in ("channel", "tensor"):
        raise ValueError(f"compressed-tensors: fp8 weights must be 8-bit channel or tensor "
                         f"scaled, got {w}")
    if not act or act.get("type") != "float" or int(act.get("num_bits", 0)) != 8:
        raise ValueError(f"compressed-tensors: fp8 weights need fp8 input activations, got {act}")
    static = not act.get("dynamic")
    if (static and act.get("strategy") != "tensor") or (not static
                                                        and act.get("strategy") != "token"):
        raise ValueError(f"compressed-tensors: fp8 activations must be static per-tensor or "
                         f"dynamic per-token, got {act}")
    per_tensor = strategy == "tensor"
    return (partial(Fp8W8A8LinearMethod, per_tensor, static),
            f"fp8 w8a8, {strategy} weight / {'static tensor' if static else 'dynamic token'} "
            "activation scales")


def _split_weight_shape(shape: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """A checkpoint-fused module's (N, K) as each fused shard's (n, K) (Phi-3's qkv_proj)."""
    if shape.numel() != 2 or int(shape[0]) != sum(sizes):
        raise ValueError(f"weight_shape {shape.tolist()} does not hold the fused shards {sizes}")
    return [torch.tensor([s, int(shape[1])], dtype=shape.dtype) for s in sizes]


class PackQuantizedLinearMethod(LinearMethod):
    def __init__(self, params: WeightOnlyParams, symmetric: bool):
        self.p, self.symmetric = params, symmetric

    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int],
                       params_dtype: torch.dtype) -> None:
        pf, n, k = self.p.pack_factor, sum(output_sizes), input_size
        g = self.p.num_groups(k)
        if not self.symmetric and any(s % pf for s in output_sizes):
            raise ValueError(f"compressed-tensors: '{layer.prefix}' output sizes {output_sizes} "
                             f"must be multiples of {pf}")

        def param(shape, dtype, **attrs):
            return set_param_attrs(nn.Parameter(torch.empty(shape, dtype=dtype),
                                                requires_grad=False), **attrs)

        layer.weight_packed = param((n, -(-k // pf)), torch.int32, output_dim=0, input_dim=1,
                                    packed_dim=1, pack_factor=pf)
        layer.weight_scale = param((n, g), params_dtype, output_dim=0, input_dim=1)
        if not self.symmetric:
            layer.weight_zero_point = param((n // pf, g), torch.int32, output_dim=0,
                                            input_dim=1, packed_dim=0, pack_factor=pf)
        # The checkpoint's (N, K) of each fused shard (whole, not this rank's slice); checked
        # against the layer after loading; -1: not in the checkpoint.
        layer.weight_shape = param((len(output_sizes), 2), torch.int64, per_shard=True,
                                   optional=True, split_fused=_split_weight_shape)
        layer.weight_shape.data.fill_(-1)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        k, offset = layer.input_size, 1 << (self.p.bits - 1)
        k_full = k * layer.tp_size if layer.split_input else k
        for shard, size in enumerate(layer.checkpoint_sizes):
            got = layer.weight_shape.data[shard].tolist()
            if got != [-1, -1] and got != [size, k_full]:
                raise ValueError(f"'{layer.prefix}.weight_shape' is {got}, expected "
                                 f"{[size, k_full]}")
        q = unpack_int32(layer.weight_packed.data, self.p.bits, dim=1)[:, :k]
        if self.symmetric:
            zeros = torch.full_like(layer.weight_scale.data, offset, dtype=torch.int32)
        else:
            zeros = unpack_int32(layer.weight_zero_point.data, self.p.bits, dim=0)
        to_canonical(layer, q.t(), zeros.t(), layer.weight_scale.data.t(), self.p)
        drop_params(layer, CHECKPOINT_PARAMS)

    def apply(self, layer: nn.Module, x: torch.Tensor,
              bias: Optional[torch.Tensor]) -> torch.Tensor:
        return apply_weight_only(layer, x, bias)

    def init_dummy(self, layer: nn.Module, generator: torch.Generator) -> None:
        k, n, pf = layer.input_size, layer.output_size, self.p.pack_factor
        q, zeros, scales = dummy_int_weight(k, n, self.p, generator,
                                            layer.weight_packed.device, layer.weight_scale.dtype)
        pad = (-k) % pf
        q = torch.cat([q, q.new_full((pad, n), 0)]) if pad else q
        layer.weight_packed.data.copy_(pack_int32(q.t(), self.p.bits, dim=1))
        layer.weight_scale.data.copy_(scales.t())
        if not self.symmetric:
            layer.weight_zero_point.data.copy_(pack_int32(zeros.t(), self.p.bits, dim=0))

    def weight_bytes(self, layer: nn.Module) -> int:
        return canonical_bytes(layer)
