"""Weight-only integer quantization (W4A16 / W8A16), shared by GPTQ, AWQ, AutoRound and
compressed-tensors pack-quantized.

Every scheme loads its own checkpoint layout, then `to_canonical` repacks it once into the layout
the kernel reads:

- `qweight` int32 [ceil(K / pf), N]: unsigned `bits`-bit values packed along K (pf = 32 // bits,
  lowest bits first; K padded with zeros to a multiple of pf),
- `scales`, `zeros` [G, N] in the activation dtype: w[k, n] = (q[k, n] - zeros[g, n]) * scales[g, n]
  with g = k // group_size,
- `perm` int64 [K] or None: act-order (GPTQ desc_act) checkpoints are permuted along K at load so
  that groups are contiguous; the forward pass then reads x[:, perm].

The CPU path dequantizes (the reference); CUDA runs `gpu_kernels/w4a16_gemm.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from engine.quantization.base import pack_int32, unpack_int32

DUMMY_STD = 0.02


@dataclass(frozen=True)
class WeightOnlyParams:
    bits: int
    group_size: int  # -1: one group over the whole input

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"weight-only quantization: bits must be 4 or 8, got {self.bits}")
        if self.group_size != -1 and self.group_size <= 0:
            raise ValueError(f"weight-only quantization: group_size must be -1 or > 0, "
                             f"got {self.group_size}")

    @property
    def pack_factor(self) -> int:
        return 32 // self.bits

    def num_groups(self, k: int) -> int:
        return 1 if self.group_size == -1 else -(-k // self.group_size)

    def group(self, k: int) -> int:
        return k if self.group_size == -1 else self.group_size


def to_canonical(layer: nn.Module, q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor,
                 params: WeightOnlyParams, g_idx: Optional[torch.Tensor] = None) -> None:
    """Install the canonical tensors on `layer` from unpacked `q` [K, N] (ints), per-group `zeros`
    and `scales` [G, N]; `g_idx` [K] (group of each input row) triggers the act-order permutation.
    Replaces the layer's checkpoint parameters (deleted by the caller's scheme)."""
    k, n = q.shape
    group = params.group(k)
    perm = None
    if g_idx is not None:
        g_idx = g_idx.to(torch.int64)
        if not torch.equal(g_idx, torch.arange(k, device=g_idx.device) // group):
            perm = torch.argsort(g_idx, stable=True)
            counts = torch.bincount(g_idx, minlength=zeros.shape[0])
            full = torch.full_like(counts, group)
            full[-1] = k - group * (zeros.shape[0] - 1)
            if not torch.equal(counts, full):
                raise ValueError(f"'{layer.prefix}.g_idx': groups must each hold group_size "
                                 f"({group}) input rows")
            q = q.index_select(0, perm)
    pf = params.pack_factor
    pad = (-k) % pf
    if pad:
        q = torch.cat([q, q.new_zeros(pad, n)])
    dtype = scales.dtype if scales.dtype.is_floating_point else torch.get_default_dtype()
    layer.register_buffer("w_qweight", pack_int32(q, params.bits, dim=0), persistent=False)
    layer.register_buffer("w_scales", scales.to(dtype).contiguous(), persistent=False)
    layer.register_buffer("w_zeros", zeros.to(dtype).contiguous(), persistent=False)
    layer.register_buffer("w_perm", perm, persistent=False)
    layer.w_bits, layer.w_group, layer.w_in = params.bits, group, k


def dequantize(layer: nn.Module) -> torch.Tensor:
    """The canonical weight as a dense [K, N] tensor in the scales' dtype (permuted K order)."""
    q = unpack_int32(layer.w_qweight, layer.w_bits, dim=0)[:layer.w_in]
    g = torch.arange(layer.w_in, device=q.device) // layer.w_group
    return (q.to(layer.w_scales.dtype) - layer.w_zeros[g]) * layer.w_scales[g]


def apply_weight_only(layer: nn.Module, x: torch.Tensor,
                      bias: Optional[torch.Tensor]) -> torch.Tensor:
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    if layer.w_perm is not None:
        x = x.index_select(1, layer.w_perm)
    if x.is_cuda:
        from gpu_kernels.w4a16_gemm import w4a16_gemm
        out = w4a16_gemm(x, layer.w_qweight, layer.w_scales, layer.w_zeros, layer.w_bits,
                         layer.w_group)
    else:
        out = x @ dequantize(layer).to(x.dtype)
    if bias is not None:
        out = out + bias
    return out.reshape(*shape[:-1], out.shape[-1])


def dummy_int_weight(k: int, n: int, params: WeightOnlyParams, gen: torch.Generator,
                     device: torch.device, dtype: torch.dtype
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (q [K, N], zeros [G, N], scales [G, N]) whose dequantized weights have about
    DUMMY_STD spread: uniform q over the full range, mid-range zeros."""
    maxq = (1 << params.bits) - 1
    q = torch.randint(0, maxq + 1, (k, n), generator=gen, device=device, dtype=torch.int32)
    g = params.num_groups(k)
    zeros = torch.full((g, n), (maxq + 1) // 2, device=device, dtype=torch.int32)
    scale = DUMMY_STD * (12 ** 0.5) / (maxq + 1)  # uniform over the range has that std
    scales = torch.full((g, n), scale, device=device, dtype=dtype)
    return q, zeros, scales


def canonical_bytes(layer: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in
               (layer.w_qweight, layer.w_scales, layer.w_zeros) if t is not None)


def drop_params(layer: nn.Module, names: list[str]) -> None:
    """Free the checkpoint-layout parameters once the canonical tensors are installed."""
    for name in names:
        if name in layer._parameters:
            del layer._parameters[name]
