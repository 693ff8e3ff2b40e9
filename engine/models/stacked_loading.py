"""Loading HF checkpoints into models whose projections are stacked (fused) along rows.

The newer model files (Phi, Phi-3, Qwen3, Gemma 3, the MoE models) share one loading loop: a
checkpoint tensor either maps onto a shard of a fused linear layer (`q_proj` -> the q shard of
`qkv_proj`), onto one expert's slice of a stacked expert tensor (see engine/layers/fused_moe.py),
or onto a parameter of the same name. `WeightLoader` checks shapes and completeness.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import nn

from engine.layers.linear import LinearBase, QKVParallelLinear
from engine.models.utils import WeightLoader, is_ignored

# HF name fragment -> (our fused layer fragment, shard id); a model passes its own table.
QKV_GATE_UP = {
    ".q_proj.": (".qkv_proj.", "q"), ".k_proj.": (".qkv_proj.", "k"),
    ".v_proj.": (".qkv_proj.", "v"),
    ".gate_proj.": (".gate_up_proj.", 0), ".up_proj.": (".gate_up_proj.", 1),
}

# (HF name) -> (our parameter name, index into it) or None when the name is not an expert weight.
ExpertMapper = Callable[[str], Optional[tuple[str, tuple]]]


def load_stacked(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]],
                 stacked: dict[str, tuple[str, object]],
                 rename: Callable[[str], Optional[str]] = lambda n: n,
                 experts: Optional[ExpertMapper] = None,
                 tied_head: bool = False) -> None:
    """Copy HF-named `weights` into `model`; ValueError on unknown names or missing parameters.

    `rename` maps a checkpoint name to ours first (None skips the tensor). A separate q/k/v or
    gate/up tensor loads into its shard of the fused layer; a tensor the checkpoint already
    fuses (Phi-3's `qkv_proj`) is split into its shards first, so every parameter's loader takes
    its tensor-parallel slice of each shard.
    """
    loader = WeightLoader(model)
    modules = dict(model.named_modules())
    for src, tensor in weights:
        if is_ignored(src):
            continue
        name = rename(src)
        if name is None or (tied_head and name == "lm_head.weight"):
            continue
        target = experts(name) if experts is not None else None
        if target is not None:
            loader.copy(target[0], tensor, target[1], src_name=src)
            continue
        for hf_part, (fused, shard) in stacked.items():
            if hf_part in name:
                loader.copy(name.replace(hf_part, fused), tensor, src_name=src, shard_id=shard)
                break
        else:
            layer = modules.get(name.rpartition(".")[0])
            if isinstance(layer, LinearBase) and len(layer.checkpoint_sizes) > 1:
                for shard, part in _split_fused(layer, name, tensor, src):
                    loader.copy(name, part, src_name=src, shard_id=shard)
            else:
                loader.copy(name, tensor, src_name=src)
    loader.finish()


def _split_fused(layer: LinearBase, name: str, tensor: torch.Tensor, src: str):
    """(shard id, part) of a checkpoint tensor holding every shard of a fused layer: rows along
    the output dim (packed or not); a parameter every output row shares (GPTQ g_idx) loads
    whole; a per-shard one (per-tensor scales) gets the fused module's value in every shard, or
    the parts its `split_fused(tensor, sizes)` hook returns (compressed-tensors weight_shape)."""
    param = getattr(layer, name.rpartition(".")[2], None)
    ids = ["q", "k", "v"] if isinstance(layer, QKVParallelLinear) else None
    sizes = list(layer.checkpoint_sizes)
    ids = ids or list(range(len(sizes)))
    if getattr(param, "per_shard", False):
        split = getattr(param, "split_fused", None)
        if split is not None:
            return zip(ids, split(tensor, sizes))
        if tensor.numel() != 1:
            raise ValueError(f"checkpoint weight '{src}' has shape {tuple(tensor.shape)}, "
                             "expected one value for the fused module")
        return ((shard, tensor) for shard in ids)
    dim = getattr(param, "output_dim", None)
    if dim is None:
        if param is None:
            raise ValueError(f"checkpoint weight '{src}' does not match any model parameter")
        return [(None, tensor)]  # shared by every shard (and every output row)
    if getattr(param, "packed_dim", None) == dim:
        sizes = [s // param.pack_factor for s in sizes]
    if tensor.dim() <= dim or tensor.shape[dim] != sum(sizes):
        raise ValueError(f"checkpoint weight '{src}' has shape {tuple(tensor.shape)}, expected "
                         f"{sum(sizes)} rows along dim {dim} (fused {sizes})")
    return zip(ids, tensor.split(sizes, dim=dim))
