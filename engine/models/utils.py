"""Weight-loading bookkeeping shared by the model files.

Every model's `load_weights` maps checkpoint (HF) names to its own parameters and copies through a
`WeightLoader`. A parameter that carries a `weight_loader` (every parameter of
`engine.layers.linear`) places the tensor itself, fused shards and packed layouts included;
others are copied whole or into a row slice. The loader rejects names the model does not know,
names the checkpoint tensor in every shape error and, at `finish()`, reports any parameter that
was not completely filled.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

# Non-parameter buffers some HF checkpoints carry; they are recomputed by our layers.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias",
                    ".attention.bias", ".attention.masked_bias")


def is_ignored(name: str) -> bool:
    """True for checkpoint buffers that carry no learned weights."""
    return name.endswith(IGNORED_SUFFIXES)


class WeightLoader:
    """Copies checkpoint tensors into a model's parameters, tracking how much of each is filled."""

    def __init__(self, model: nn.Module):
        # named_parameters() lists a tied parameter once, under its first (embedding) name.
        self.params = dict(model.named_parameters())
        self.filled: dict[str, int] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.params

    def copy(self, name: str, tensor: torch.Tensor, rows: Optional[slice] = None,
             src_name: Optional[str] = None, shard_id: Any = None) -> None:
        """Copy `tensor` into parameter `name`: through the parameter's own `weight_loader`
        (fused shard `shard_id`) when it has one, else whole or into `param[rows]`."""
        src = src_name or name
        if name not in self.params:
            raise ValueError(f"checkpoint weight '{src}' does not match any model parameter")
        param = self.params[name]
        weight_loader = getattr(param, "weight_loader", None)
        if weight_loader is not None and rows is None:
            try:
                written = weight_loader(param, tensor, shard_id)
            except ValueError as e:
                raise ValueError(f"checkpoint weight '{src}' (for '{name}'): {e}") from None
            self.filled[name] = self.filled.get(name, 0) + written
            return
        dst = param.data if rows is None else param.data[rows]
        if tuple(dst.shape) != tuple(tensor.shape):
            raise ValueError(f"checkpoint weight '{src}' has shape {tuple(tensor.shape)}, "
                             f"expected {tuple(dst.shape)} for '{name}'")
        with torch.no_grad():
            dst.copy_(tensor)
        self.filled[name] = self.filled.get(name, 0) + dst.numel()

    def finish(self) -> None:
        """Raise ValueError naming every parameter the checkpoint left (partly) unfilled."""
        # `optional` parameters (e.g. a GPTQ g_idx some exporters omit) get defaults from their
        # quantization method after loading.
        missing = [n for n, p in self.params.items()
                   if self.filled.get(n, 0) < p.numel() and not getattr(p, "optional", False)]
        if missing:
            shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise ValueError(f"checkpoint is missing {len(missing)} weight(s): {shown}")
