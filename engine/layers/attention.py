"""The Attention layer every model uses: write this step's K/V, attend through the block table."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from engine.attention.metadata import AttentionMetadata


class Attention(nn.Module):
    """Paged attention over flat token rows.

    `kv_cache` (a pair of `[num_blocks, block_size, num_kv_heads, head_dim]` tensors) and `backend`
    are bound by the model runner after the pool is allocated (`bind_kv_caches`); the layer holds
    no other state. Inputs are `[num_tokens, heads * head_dim]`; positions/rotary are applied by the
    caller. `logit_softcap` (Gemma 2): scaled scores become `cap * tanh(score / cap)`.
    """

    def __init__(self, num_heads: int, head_dim: int, scale: float,
                 num_kv_heads: Optional[int] = None, sliding_window: Optional[int] = None,
                 logit_softcap: Optional[float] = None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = scale
        self.num_kv_heads = num_kv_heads or num_heads
        if num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                             f"({self.num_kv_heads})")
        self.sliding_window = sliding_window
        self.logit_softcap = float(logit_softcap) if logit_softcap else None
        # FP8 KV cache: K/V are stored divided by these (engine.quantization.kv_cache).
        self.k_scale = 1.0
        self.v_scale = 1.0
        self.kv_cache: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self.backend = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                meta: AttentionMetadata) -> torch.Tensor:
        n = q.shape[0]
        q = q.view(n, self.num_heads, self.head_dim)
        k = k.view(n, self.num_kv_heads, self.head_dim)
        v = v.view(n, self.num_kv_heads, self.head_dim)
        if self.kv_cache is None or self.backend is None:
            raise RuntimeError("Attention layer used before the runner bound its KV cache")
        key_cache, value_cache = self.kv_cache
        scale = self.scale
        scaled = key_cache.element_size() == 1 and (self.k_scale != 1.0 or self.v_scale != 1.0)
        if scaled:  # scores are linear in k, the output in v: the kernels need no scale
            k, v, scale = k / self.k_scale, v / self.v_scale, scale * self.k_scale
        self.backend.write_kv(k, v, key_cache, value_cache, meta)
        if self.logit_softcap is None:
            out = self.backend.attend(q, key_cache, value_cache, meta, scale,
                                      self.sliding_window)
        else:
            out = self.backend.attend(q, key_cache, value_cache, meta, scale,
                                      self.sliding_window, softcap=self.logit_softcap)
        if scaled and self.v_scale != 1.0:
            out = out * self.v_scale
        return out.reshape(n, self.num_heads * self.head_dim)


def attention_layers(model: nn.Module) -> list[Attention]:
    """Every Attention module of a model, in layer order (the order KV caches are bound in)."""
    return [m for m in model.modules() if isinstance(m, Attention)]


def bind_kv_caches(model: nn.Module, kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
                   backend) -> None:
    layers = attention_layers(model)
    if len(layers) != len(kv_caches):
        raise ValueError(f"model has {len(layers)} attention layers but {len(kv_caches)} caches")
    for layer, cache in zip(layers, kv_caches):
        layer.kv_cache = cache
        layer.backend = backend
