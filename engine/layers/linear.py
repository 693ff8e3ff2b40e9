"""Linear layers whose quantization method owns the parameters and whose parameters load
themselves.

`ReplicatedLinear` (whole weight on every rank), `ColumnParallelLinear` (output features split
over ranks), `MergedColumnParallelLinear` (gate/up fused along the output), `QKVParallelLinear`
(q/k/v fused, heads split over ranks) and `RowParallelLinear` (input features split; each rank's
output is its partial sum, which its forward all-reduces over the group). `tp_size` / `tp_rank`
default to this process's tensor-parallel group (engine/distributed/parallel_state.py): size 1
and rank 0 without one, and then no collective runs.

Every parameter has `weight_loader(param, tensor, shard_id=None) -> int` (elements written).
Which tensor dim is the output/input dim, and whether it is packed (several quantized values per
int32) or counts groups, is read from the parameter's attributes (`quantization/base.py`), so the
same loader places a dense weight, a GPTQ qweight or an AWQ qzeros shard.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from engine.distributed import parallel_state
from engine.quantization.base import LinearMethod, QuantizationConfig
from engine.quantization.input_quant import QuantizedInput
from engine.quantization.unquantized import UnquantizedLinearMethod

ShardId = Union[int, str, None]


class LinearBase(nn.Module):
    """y = x W^T + b through `quant_method`; see the module docstring for the subclasses."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool,
                 quant_config: Optional[QuantizationConfig], prefixes: list[str],
                 tp_size: Optional[int] = None, tp_rank: Optional[int] = None,
                 split_input: bool = False, split_output: bool = False,
                 params_dtype: Optional[torch.dtype] = None):
        super().__init__()
        tp_size = parallel_state.tp_size() if tp_size is None else tp_size
        tp_rank = parallel_state.tp_rank() if tp_rank is None else tp_rank
        if not 0 <= tp_rank < tp_size:
            raise ValueError(f"tp_rank {tp_rank} outside tp_size {tp_size}")
        for size, what in [(input_size, "input")] * split_input + [
                (s, "output") for s in output_sizes] * split_output:
            if size % tp_size:
                raise ValueError(f"{prefixes[0]}: {what} size {size} not divisible by tp_size "
                                 f"{tp_size}")
        self.tp_size, self.tp_rank = tp_size, tp_rank
        self.checkpoint_sizes = list(output_sizes)  # the fused shards' full (unsplit) sizes
        self.split_input, self.split_output = split_input, split_output
        self.input_size = input_size // tp_size if split_input else input_size
        self.output_sizes = [s // tp_size for s in output_sizes] if split_output else list(output_sizes)
        self.output_size = sum(self.output_sizes)
        self.prefix = prefixes[0]
        dtype = params_dtype or torch.get_default_dtype()
        method = quant_config.get_linear_method(prefixes) if quant_config is not None else None
        self.quant_method: LinearMethod = method or UnquantizedLinearMethod()
        self.quant_method.create_weights(self, self.input_size, self.output_sizes, dtype)
        if bias:
            self.bias = nn.Parameter(torch.empty(self.output_size, dtype=dtype),
                                     requires_grad=False)
            self.bias.output_dim = 0
        else:
            self.register_parameter("bias", None)
        for param in self.parameters(recurse=False):
            param.weight_loader = self.weight_loader
        self._shared_loaded: set[int] = set()

    def forward(self, x: Union[torch.Tensor, QuantizedInput]) -> torch.Tensor:
        # x is a QuantizedInput when the producing module emits what `quant_method.input_quant`
        # asked for (quantization/input_quant.py); the method takes it as it is.
        # A row-parallel layer adds its bias on one rank only (the all-reduce sums the rest).
        bias = self.bias if not (self.split_input and self.tp_rank) else None
        return self.quant_method.apply(self, x, bias)

    def extra_repr(self) -> str:
        return (f"in={self.input_size}, out={self.output_sizes}, "
                f"method={type(self.quant_method).__name__}")

    # ---- loading ---------------------------------------------------------------------------
    def shard_index(self, shard_id: ShardId) -> Optional[int]:
        if shard_id is None:
            return None
        if not isinstance(shard_id, int) or not 0 <= shard_id < len(self.output_sizes):
            raise ValueError(f"{self.prefix}: no output shard {shard_id!r}")
        return shard_id

    @torch.no_grad()
    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor,
                      shard_id: ShardId = None) -> int:
        """Copy a checkpoint tensor (whole, or fused shard `shard_id`) into this rank's part of
        `param`; ValueError (naming the parameter's role) on a shape that does not fit."""
        idx = self.shard_index(shard_id)
        dst = param.data
        if getattr(param, "per_shard", False):  # one entry per fused shard (per-tensor scales)
            dst = dst[idx or 0]
            loaded = loaded.reshape(dst.shape) if loaded.numel() == dst.numel() else loaded
        else:
            out_dim = getattr(param, "output_dim", None)
            if out_dim is not None:
                if idx is not None:
                    start, size = sum(self.output_sizes[:idx]), self.output_sizes[idx]
                    if getattr(param, "packed_dim", None) == out_dim:
                        start, size = _packed(start, param), _packed(size, param)
                    dst = dst.narrow(out_dim, start, size)
                if self.split_output:
                    loaded = self._rank_slice(loaded, dst, out_dim)
            in_dim = getattr(param, "input_dim", None)
            if self.split_input and in_dim is not None:
                loaded = self._rank_slice(loaded, dst, in_dim)
                if getattr(param, "group_index_size", None):
                    loaded = self._local_groups(loaded, param.group_index_size)
            if out_dim is None and idx is not None:
                return self._load_shared(param, dst, loaded)
        _check_shape(dst, loaded)
        dst.copy_(loaded)
        return dst.numel()

    def _rank_slice(self, loaded: torch.Tensor, dst: torch.Tensor, dim: int) -> torch.Tensor:
        size = dst.shape[dim]
        if loaded.dim() != dst.dim() or loaded.shape[dim] != size * self.tp_size:
            raise ValueError(f"has shape {tuple(loaded.shape)}, expected {tuple(dst.shape)} "
                             f"with dim {dim} times tp_size {self.tp_size}")
        return loaded.narrow(dim, self.tp_rank * size, size)

    def _local_groups(self, g_idx: torch.Tensor, group_size: int) -> torch.Tensor:
        """A row-parallel shard of a group index (GPTQ g_idx): renumber its groups from this
        rank's first one; act-order indices that reach outside the shard cannot be split."""
        k = g_idx.shape[0]
        first, groups = self.tp_rank * k // group_size, -(-k // group_size)
        local = g_idx - first
        if local.numel() and (int(local.min()) < 0 or int(local.max()) >= groups):
            raise ValueError("group index (act-order g_idx) reaches outside this rank's input "
                             "shard; such checkpoints cannot be split over tensor parallel ranks")
        return local

    def _load_shared(self, param: nn.Parameter, dst: torch.Tensor, loaded: torch.Tensor) -> int:
        """A parameter every fused shard carries a copy of (e.g. g_idx): the copies must agree."""
        _check_shape(dst, loaded)
        if id(param) in self._shared_loaded:
            if not torch.equal(dst, loaded.to(dst.dtype)):
                raise ValueError("differs between the fused shards of "
                                 f"'{self.prefix}' (they must share it)")
            return 0
        self._shared_loaded.add(id(param))
        dst.copy_(loaded)
        return dst.numel()


def _packed(n: int, param: nn.Parameter) -> int:
    pf = param.pack_factor
    if n % pf:
        raise ValueError(f"shard boundary {n} is not a multiple of the packing factor {pf}")
    return n // pf


def _check_shape(dst: torch.Tensor, loaded: torch.Tensor) -> None:
    if tuple(dst.shape) != tuple(loaded.shape):
        raise ValueError(f"has shape {tuple(loaded.shape)}, expected {tuple(dst.shape)}")


class ReplicatedLinear(LinearBase):
    """The whole weight on every rank (small projections, LM heads)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = True,
                 quant_config: Optional[QuantizationConfig] = None, prefix: str = ""):
        super().__init__(input_size, [output_size], bias, quant_config, [prefix], 1, 0)


class ColumnParallelLinear(LinearBase):
    """Output features split over ranks; each rank returns its slice of the output."""

    def __init__(self, input_size: int, output_size: int, bias: bool = True,
                 quant_config: Optional[QuantizationConfig] = None, prefix: str = "",
                 tp_size: Optional[int] = None, tp_rank: Optional[int] = None):
        super().__init__(input_size, [output_size], bias, quant_config, [prefix], tp_size,
                         tp_rank, split_output=True)


class MergedColumnParallelLinear(LinearBase):
    """Several column-parallel projections of the same input fused along the output (gate/up);
    `shard_id` is the index into `output_sizes`, `prefixes` their checkpoint names."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = True,
                 quant_config: Optional[QuantizationConfig] = None,
                 prefixes: Optional[list[str]] = None, tp_size: Optional[int] = None,
                 tp_rank: Optional[int] = None):
        super().__init__(input_size, output_sizes, bias, quant_config,
                         prefixes or [""] * len(output_sizes), tp_size, tp_rank, split_output=True)


class QKVParallelLinear(LinearBase):
    """q, k and v fused along the output, rows [q | k | v]; `shard_id` 'q', 'k' or 'v'. Heads are
    split over ranks (kv heads replicated when fewer than ranks)."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 bias: bool = True, quant_config: Optional[QuantizationConfig] = None,
                 prefixes: Optional[list[str]] = None, tp_size: Optional[int] = None,
                 tp_rank: Optional[int] = None):
        tp_size = parallel_state.tp_size() if tp_size is None else tp_size
        if num_heads % tp_size:
            raise ValueError(f"num_heads {num_heads} not divisible by tp_size {tp_size}")
        if num_kv_heads < tp_size and tp_size % num_kv_heads:
            raise ValueError(f"num_kv_heads {num_kv_heads} cannot be spread over tp {tp_size}")
        self.kv_replicas = max(1, tp_size // num_kv_heads)
        kv_heads_total = num_kv_heads * self.kv_replicas  # replicated kv heads count per rank
        sizes = [num_heads * head_dim, kv_heads_total * head_dim, kv_heads_total * head_dim]
        super().__init__(hidden_size, sizes, bias, quant_config, prefixes or ["", "", ""],
                         tp_size, tp_rank, split_output=True)
        self.checkpoint_sizes = [num_heads * head_dim] + [num_kv_heads * head_dim] * 2

    def shard_index(self, shard_id: ShardId) -> Optional[int]:
        if shard_id is None:
            return None
        if shard_id not in ("q", "k", "v"):
            raise ValueError(f"{self.prefix}: qkv shard must be 'q', 'k' or 'v', got {shard_id!r}")
        return "qkv".index(shard_id)

    def _rank_slice(self, loaded: torch.Tensor, dst: torch.Tensor, dim: int) -> torch.Tensor:
        if self.kv_replicas > 1 and loaded.shape[dim] * self.kv_replicas == dst.shape[dim] * \
                self.tp_size:  # a k/v shard whose heads are replicated over several ranks
            size = dst.shape[dim]
            return loaded.narrow(dim, (self.tp_rank // self.kv_replicas) * size, size)
        return super()._rank_slice(loaded, dst, dim)


class RowParallelLinear(LinearBase):
    """Input features split over ranks; the output is this rank's partial sum (bias on rank 0)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = True,
                 quant_config: Optional[QuantizationConfig] = None, prefix: str = "",
                 tp_size: Optional[int] = None, tp_rank: Optional[int] = None):
        super().__init__(input_size, [output_size], bias, quant_config, [prefix], tp_size,
                         tp_rank, split_input=True)
        # The all-reduce runs only inside a group of this size (a layer built with an explicit
        # tp_size outside one, as in loader tests, returns its partial sum).
        self.reduce = self.tp_size > 1 and parallel_state.tp_size() == self.tp_size

    def forward(self, x: Union[torch.Tensor, QuantizedInput]) -> torch.Tensor:
        out = super().forward(x)
        return parallel_state.all_reduce(out) if self.reduce else out


def linear_layers(model: nn.Module) -> list[LinearBase]:
    return [m for m in model.modules() if isinstance(m, LinearBase)]
