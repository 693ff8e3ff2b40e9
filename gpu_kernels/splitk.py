"""Split-K reduced inside the launch that computes the partial tiles.

Programs that share an output tile add their fp32 partial sums into a workspace and bump the
tile's arrival counter; the last to arrive reads the total, and zeroes the workspace tile and the
counter for the next call, so no zeroing or reduction kernel runs around the GEMM (and CUDA graphs
capture one launch). Used by the W4A16 GEMM/GEMV and the 16-bit skinny GEMM.
"""
from __future__ import annotations

import torch

from gpu_kernels._triton_utils import tl, triton

if triton is not None:

    @triton.jit
    def splitk_reduce(acc, ws_ptrs, mask, cnt_ptr, tile):
        """Add `acc` into the workspace at `ws_ptrs` (masked by `mask`) and count the arrival at
        `cnt_ptr + tile`. Returns (total, last): `last` is true in the tile's last program to
        arrive, which gets the full sum in `total` and must store it (elsewhere `total` is the
        program's own partial sum)."""
        tl.atomic_add(ws_ptrs, acc, mask=mask, sem="release")
        tl.debug_barrier()  # every thread's adds issued before the counter's release
        arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel")
        last = arrived == tl.num_programs(2) - 1
        total = acc
        if last:
            total = tl.load(ws_ptrs, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(ws_ptrs, tl.zeros_like(acc), mask=mask)
            tl.store(cnt_ptr + tile, 0)
        return total, last


_WORKSPACES: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
_RETIRED: list[tuple[torch.Tensor, torch.Tensor]] = []  # captured graphs may still point at them


def splitk_workspace(device: torch.device, elems: int,
                     tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The split-K fp32 accumulator and per-tile counters of `device`, zeroed once: every launch
    leaves them zeroed again, so calls on one stream (and CUDA graph replays) share them. Grown,
    never shrunk (32 MB at first: M x N of every decode shape up to a 70B model's), and a replaced
    pair is kept alive for CUDA graphs captured with it. The split count must be the launch
    grid's third dimension."""
    ws, cnt = _WORKSPACES.get(device, (None, None))
    if ws is None or ws.numel() < elems or cnt.numel() < tiles:
        if ws is not None:
            _RETIRED.append((ws, cnt))
        size = max(elems, 1 << 23, ws.numel() if ws is not None else 0)
        ntiles = max(tiles, 4096, cnt.numel() if cnt is not None else 0)
        ws = torch.zeros(size, dtype=torch.float32, device=device)
        cnt = torch.zeros(ntiles, dtype=torch.int32, device=device)
        _WORKSPACES[device] = (ws, cnt)
    return ws, cnt
