"""Pure-torch reference: write new K/V rows into the paged cache by slot mapping."""
from __future__ import annotations

import torch


def reshape_and_cache_ref(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                          value_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """key/value: [T, KVH, D]; caches: [num_blocks, block_size, KVH, D]; slot = block*bs + off.

    Tokens whose slot is negative (padding) are skipped.
    """
    nb, bs, kvh, d = key_cache.shape
    flat_k = key_cache.view(nb * bs, kvh, d)
    flat_v = value_cache.view(nb * bs, kvh, d)
    slots = slot_mapping.to(torch.long)
    valid = slots >= 0
    if not bool(valid.all()):
        slots, key, value = slots[valid], key[valid], value[valid]
    if key_cache.dtype == torch.float8_e4m3fn:  # per-tensor scale 1.0, saturating
        fmax = torch.finfo(key_cache.dtype).max
        key = key.clamp(-fmax, fmax).to(key_cache.dtype).view(torch.uint8)
        value = value.clamp(-fmax, fmax).to(value_cache.dtype).view(torch.uint8)
        flat_k, flat_v = flat_k.view(torch.uint8), flat_v.view(torch.uint8)
    flat_k.index_copy_(0, slots, key.to(flat_k.dtype))
    flat_v.index_copy_(0, slots, value.to(flat_v.dtype))
