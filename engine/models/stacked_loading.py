"""Loading HF checkpoints into models whose projections are stacked (fused) along rows.

The newer model files (Phi, Phi-3, Qwen3, Gemma 3, the MoE models) share one loading loop: a
checkpoint tensor either maps onto a row shard of a fused parameter (`q_proj` -> the q rows of
`qkv_proj`), onto one expert's slice of a stacked expert tensor (see engine/layers/fused_moe.py),
or onto a parameter of the same name. `WeightLoader` checks shapes and completeness.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import nn

from engine.models.utils import WeightLoader, is_ignored

# HF name fragment -> (our fused parameter fragment, shard index); a model passes its own table.
QKV_GATE_UP = {
    ".q_proj.": (".qkv_proj.", 0), ".k_proj.": (".qkv_proj.", 1), ".v_proj.": (".qkv_proj.", 2),
    ".gate_proj.": (".gate_up_proj.", 0), ".up_proj.": (".gate_up_proj.", 1),
}

# (HF name) -> (our parameter name, index into it) or None when the name is not an expert weight.
ExpertMapper = Callable[[str], Optional[tuple[str, tuple]]]


def qkv_sizes(config) -> list[int]:
    """Row sizes of a fused qkv projection: [q, k, v]."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]


def load_stacked(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]],
                 stacked: dict[str, tuple[str, int]], qkv_rows: list[int],
                 rename: Callable[[str], Optional[str]] = lambda n: n,
                 experts: Optional[ExpertMapper] = None,
                 tied_head: bool = False) -> None:
    """Copy HF-named `weights` into `model`; ValueError on unknown names or missing parameters.

    `rename` maps a checkpoint name to ours first (None skips the tensor). gate/up shards split
    their fused parameter's rows in half; qkv shards use `qkv_rows`.
    """
    loader = WeightLoader(model)
    params = dict(model.named_parameters())
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
                dst = name.replace(hf_part, fused)
                if dst not in params:
                    raise ValueError(f"checkpoint weight '{src}' does not match any model "
                                     "parameter")
                if fused == ".qkv_proj.":
                    sizes = qkv_rows
                else:
                    sizes = [params[dst].shape[0] // 2] * 2
                start = sum(sizes[:shard])
                loader.copy(dst, tensor, slice(start, start + sizes[shard]), src_name=src)
                break
        else:
            loader.copy(name, tensor, src_name=src)
    loader.finish()
