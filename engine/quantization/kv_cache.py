"""Per-tensor FP8 KV-cache scales from the checkpoint.

An FP8 (e4m3) KV cache stores `k / k_scale` and `v / v_scale`; attention reads them back as
`k8 * k_scale`, which the Attention layer folds into the softmax scale (scores are linear in k)
and into its output (the output is linear in v), so the kernels need no scale argument. Without
scales in the checkpoint both are 1.0: fine for models whose K/V stay well inside e4m3's range
(|x| <= 448, resolution ~2^-9 near zero), lossy otherwise. To calibrate, quantize the checkpoint
with llmcompressor's `kv_cache_scheme` (FP8 per-tensor): it writes the scales these names read.

Checkpoint names accepted (per decoder layer N): `model.layers.N.self_attn.{k,v}_scale` (llmcompressor
/ compressed-tensors), `...self_attn.{k,v}_proj.output_scale` (older compressed-tensors),
`...self_attn.kv_scale` (one scale for both, older AutoFP8). Scales apply only when the cache is
FP8 (`--kv-cache-dtype fp8`); a bf16/fp16 cache stores K/V exactly and ignores them.
"""
from __future__ import annotations

import math
import re
from typing import Iterable, Iterator

import torch
from torch import nn

_SCALE_NAME = re.compile(
    r"(?:^|\.)layers\.(\d+)\.(?:self_attn|attention|attn)\."
    r"(?:(k|v)_scale|(k|v)_proj\.output_scale|(kv)_scale)$")


class KVScales:
    """Collects KV-cache scales out of a weight stream, then sets them on the attention layers."""

    def __init__(self) -> None:
        self.scales: dict[tuple[int, str], float] = {}

    def filter(self, weights: Iterable[tuple[str, torch.Tensor]]
               ) -> Iterator[tuple[str, torch.Tensor]]:
        """`weights` without the KV-scale tensors (the model does not own them)."""
        for name, tensor in weights:
            m = _SCALE_NAME.search(name)
            if m is None:
                yield name, tensor
                continue
            if tensor.numel() != 1:
                raise ValueError(f"{name}: a KV-cache scale must be one number (per-tensor), got "
                                 f"shape {tuple(tensor.shape)}")
            value = float(tensor.float().reshape(()).item())
            if not math.isfinite(value) or value <= 0.0:
                raise ValueError(f"{name}: a KV-cache scale must be a positive finite number, "
                                 f"got {value}")
            layer, which = int(m.group(1)), m.group(2) or m.group(3) or m.group(4)
            for kind in (("k", "v") if which == "kv" else (which,)):
                self.scales[(layer, kind)] = value

    def apply(self, model: nn.Module) -> int:
        """Set `k_scale` / `v_scale` on the model's Attention layers (in layer order); returns
        how many layers received scales."""
        from engine.layers.attention import attention_layers

        layers = attention_layers(model)
        touched = set()
        for (index, kind), value in self.scales.items():
            if index >= len(layers):
                raise ValueError(f"layers.{index}: KV-cache scale for a layer the model does not "
                                 f"have ({len(layers)} attention layers)")
            setattr(layers[index], f"{kind}_scale", value)
            touched.add(index)
        return len(touched)
