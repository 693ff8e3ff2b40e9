"""Block copies for copy-on-write, and swapping blocks between GPU and pinned CPU memory.

`copy_blocks` copies whole cache blocks `src -> dst` (pairs in a `[N, 2]` tensor) in every
layer's key and value cache with one launch: the caches' base addresses sit in a small int64
table and each program copies one tile of one block of one cache (a bandwidth-bound gather/
scatter). `swap_blocks` moves blocks between a GPU cache and a pinned CPU cache on a side CUDA
stream with plain torch copies, so swapping overlaps the model's compute; the caller waits on the
returned event before touching the destination blocks.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from gpu_kernels._triton_utils import cdiv, require_triton, tl, triton

_TILE = 2048  # elements per program: a block of 16 x 8 heads x 128 is 8 tiles

if triton is not None:

    @triton.jit
    def _copy_blocks_kernel(ptr_table, typed_ref, mapping, block_numel,
                            TILE: tl.constexpr):
        cache_idx = tl.program_id(0)
        pair = tl.program_id(1)
        offs = tl.program_id(2) * TILE + tl.arange(0, TILE)
        mask = offs < block_numel
        base = tl.load(ptr_table + cache_idx).to(tl.pointer_type(typed_ref.dtype.element_ty))
        src = tl.load(mapping + 2 * pair).to(tl.int64)
        dst = tl.load(mapping + 2 * pair + 1).to(tl.int64)
        vals = tl.load(base + src * block_numel + offs, mask=mask)
        tl.store(base + dst * block_numel + offs, vals, mask=mask)


def copy_blocks(key_caches: Sequence[torch.Tensor], value_caches: Sequence[torch.Tensor],
                block_mapping: torch.Tensor) -> None:
    """For each row (src, dst) of `block_mapping` `[N, 2]`, cache[dst] = cache[src], all layers.

    Every cache is `[num_blocks, ...]`, contiguous, of one shape and dtype, on one device. A dst
    block must not also be a src in the same call (copy-on-write never asks for that).
    """
    caches = list(key_caches) + list(value_caches)
    if not caches:
        return
    first = caches[0]
    require_triton(first)
    for c in caches:
        if c.shape != first.shape or c.dtype != first.dtype or c.device != first.device:
            raise ValueError("all caches must share shape, dtype and device")
        if not c.is_contiguous():
            raise ValueError("caches must be contiguous")
    if block_mapping.dim() != 2 or block_mapping.shape[1] != 2:
        raise ValueError(f"block_mapping must be [N, 2], got {tuple(block_mapping.shape)}")
    if block_mapping.shape[0] == 0:
        return
    mapping = block_mapping.to(device=first.device, dtype=torch.int64).contiguous()
    block_numel = first[0].numel()
    table = torch.tensor([c.data_ptr() for c in caches], dtype=torch.int64, device=first.device)
    grid = (len(caches), mapping.shape[0], cdiv(block_numel, _TILE))
    _copy_blocks_kernel[grid](table, first, mapping, block_numel, TILE=_TILE, num_warps=4)


def copy_blocks_ref(key_caches: Sequence[torch.Tensor], value_caches: Sequence[torch.Tensor],
                    block_mapping: torch.Tensor) -> None:
    src = block_mapping[:, 0].long()
    dst = block_mapping[:, 1].long()
    for c in list(key_caches) + list(value_caches):
        c[dst.to(c.device)] = c[src.to(c.device)]


def swap_blocks(src_cache: torch.Tensor, dst_cache: torch.Tensor, block_mapping: torch.Tensor,
                stream: Optional["torch.cuda.Stream"] = None) -> Optional["torch.cuda.Event"]:
    """dst_cache[dst] = src_cache[src] for each (src, dst) row, across devices.

    GPU <-> pinned CPU: the copies are queued on `stream` (a side stream by default) after the
    current stream's pending work, and an event recorded after them is returned: wait on it
    (`torch.cuda.current_stream().wait_event(ev)`) before using the destination blocks. The CPU
    cache must be pinned for the copies to be asynchronous. Without CUDA the copy is immediate
    and None is returned.
    """
    if block_mapping.dim() != 2 or block_mapping.shape[1] != 2:
        raise ValueError(f"block_mapping must be [N, 2], got {tuple(block_mapping.shape)}")
    if src_cache.shape[1:] != dst_cache.shape[1:] or src_cache.dtype != dst_cache.dtype:
        raise ValueError("src and dst caches must share block shape and dtype")
    pairs = block_mapping.to("cpu", torch.int64).tolist()
    cuda_dev = next((c.device for c in (src_cache, dst_cache) if c.device.type == "cuda"), None)
    if cuda_dev is None:
        for s, d in pairs:
            dst_cache[d].copy_(src_cache[s])
        return None
    for c in (src_cache, dst_cache):
        if c.device.type == "cpu" and not c.is_pinned():
            raise ValueError("the CPU side of a swap must be pinned memory")
    with torch.cuda.device(cuda_dev):
        side = stream if stream is not None else torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for s, d in pairs:
                dst_cache[d].copy_(src_cache[s], non_blocking=True)
        event = torch.cuda.Event()
        event.record(side)
    for c in (src_cache, dst_cache):  # keep the allocator from reusing them under the copies
        if c.device.type == "cuda":
            c.record_stream(side)
    return event


def swap_blocks_ref(src_cache: torch.Tensor, dst_cache: torch.Tensor,
                    block_mapping: torch.Tensor) -> None:
    src = block_mapping[:, 0].long().to(src_cache.device)
    dst = block_mapping[:, 1].long().to(dst_cache.device)
    dst_cache[dst] = src_cache[src].to(dst_cache.device)
