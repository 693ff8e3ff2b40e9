"""The quantization interface: a `QuantizationConfig` per scheme hands each linear layer a
`LinearMethod`, which creates the layer's parameters, post-processes them once the checkpoint is
loaded (repacking for a kernel, quantizing dense weights) and computes the layer's output.

A linear layer (engine/layers/linear.py) never knows which scheme it runs: it calls
`create_weights` once, `process_weights_after_loading` once, `apply` per forward. Parameters made by
`create_weights` carry the attributes the layer's weight loader reads (see `set_param_attrs`).
A method that quantizes its input per token says so in `input_quant`; the module producing that
input may then hand `apply` a `QuantizedInput` instead of a tensor (input_quant.py).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Optional, Union

import torch
from torch import nn

from engine.quantization.input_quant import InputQuant, QuantizedInput


class LinearMethod(ABC):
    """How one linear layer stores, prepares and applies its weight."""

    @abstractmethod
    def create_weights(self, layer: nn.Module, input_size: int, output_sizes: list[int],
                       params_dtype: torch.dtype) -> None:
        """Register the layer's parameters for a [sum(output_sizes), input_size] weight (this
        rank's partition); `output_sizes` lists the fused shards (q/k/v, gate/up)."""

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Called once after every parameter is filled (checkpoint or dummy)."""

    @abstractmethod
    def apply(self, layer: nn.Module, x: Union[torch.Tensor, QuantizedInput],
              bias: Optional[torch.Tensor]) -> torch.Tensor:
        """x [..., input_size] -> [..., output_size] in x's dtype. x is a `QuantizedInput` only
        when `input_quant` returned a spec (then its shape and dtype are x's)."""

    def input_quant(self, layer: nn.Module) -> Optional[InputQuant]:
        """The per-token quantization `apply` performs on its input, which the producing module
        may do instead (fused); None: the input must arrive as a tensor."""
        return None

    @abstractmethod
    def init_dummy(self, layer: nn.Module, generator: torch.Generator) -> None:
        """Fill the layer's parameters with random values of a valid quantized layout
        (`--load-format dummy`); the weights come out with roughly N(0, 0.02) magnitudes."""

    def weight_bytes(self, layer: nn.Module) -> int:
        """Bytes of the weights this method keeps for the forward pass."""
        return sum(p.numel() * p.element_size() for p in layer.parameters(recurse=False)
                   if p is not getattr(layer, "bias", None))


class QuantizationConfig(ABC):
    """One quantization scheme, parsed from a checkpoint's `quantization_config` (or requested
    with `quantization=` for schemes that quantize dense weights at load)."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_config(cls, config: dict[str, Any]) -> "QuantizationConfig":
        """Parse (and validate) the checkpoint's `quantization_config` dict."""

    @abstractmethod
    def get_linear_method(self, prefixes: list[str]) -> Optional[LinearMethod]:
        """The method for a linear layer holding the checkpoint modules `prefixes` (one name, or
        the fused shards' names, e.g. ['model.layers.0.self_attn.q_proj', ... k_proj, v_proj]);
        None leaves it unquantized."""

    def describe(self) -> str:
        return self.name


def set_param_attrs(param: nn.Parameter, **attrs: Any) -> nn.Parameter:
    """Attach loader metadata to a parameter.

    Recognised keys: `output_dim` / `input_dim` (which tensor dim runs along the layer's output /
    input features; absent when the parameter is shared by every output row, e.g. g_idx),
    `packed_dim` + `pack_factor` (that dim holds `pack_factor` values per element),
    `group_dim` + `group_size` (that dim counts quantization groups of the given size),
    `per_shard` (one entry per fused shard, e.g. per-tensor scales), `weight_loader`.
    """
    for key, value in attrs.items():
        setattr(param, key, value)
    return param


def unpack_int32(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Unpack `32 // bits` unsigned values per int32 along `dim` (lowest bits first) -> int32."""
    pf = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=packed.device)
    moved = packed.movedim(dim, -1).unsqueeze(-1)
    vals = (moved >> shifts) & ((1 << bits) - 1)
    vals = vals.reshape(*moved.shape[:-2], moved.shape[-2] * pf)
    return vals.movedim(-1, dim).contiguous()


def pack_int32(values: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Inverse of `unpack_int32`: pack unsigned `bits`-bit values (int) along `dim` (its size must
    be a multiple of 32 // bits)."""
    pf = 32 // bits
    moved = values.movedim(dim, -1).to(torch.int64)
    if moved.shape[-1] % pf:
        raise ValueError(f"cannot pack {moved.shape[-1]} values {pf} to an int32")
    moved = moved.reshape(*moved.shape[:-1], moved.shape[-1] // pf, pf)
    shifts = torch.arange(0, 32, bits, dtype=torch.int64, device=values.device)
    packed = (moved << shifts).sum(-1)
    packed = torch.where(packed >= 1 << 31, packed - (1 << 32), packed).to(torch.int32)
    return packed.movedim(-1, dim).contiguous()
