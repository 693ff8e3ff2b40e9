"""The physical limit a throughput number is compared against.

A decoder forward pass costs about 2 FLOPs per matmul parameter per token, so a device that runs
dense matmuls at F FLOP/s cannot process more than F / (2 * params) tokens per second. F is
measured in the same run (a large square matmul, best of a few trials) rather than taken from a
datasheet: bf16 on a GPU; fp32 on a CPU (what the engine computes in there), labelled as such.
"""
from __future__ import annotations

import time
from typing import Any, Optional

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_flops(device: str | torch.device = "auto", dtype: Optional[torch.dtype] = None,
                         size: Optional[int] = None, min_seconds: float = 0.3,
                         trials: int = 3) -> dict[str, Any]:
    """Best achieved FLOP/s of an `size x size @ size x size` matmul on `device`.

    Returns `matmul_flops` (FLOP/s), `matmul_dtype`, `matmul_size` and `matmul_device`.
    """
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    on_gpu = dev.type == "cuda"
    dtype = dtype or (torch.bfloat16 if on_gpu else torch.float32)
    size = size or (8192 if on_gpu else 1024)
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(size, size, device=dev, dtype=dtype, generator=gen)
    b = torch.randn(size, size, device=dev, dtype=dtype, generator=gen)
    flop = 2.0 * size ** 3
    for _ in range(2):  # warm-up: kernel selection, clocks
        torch.mm(a, b)
    _sync(dev)
    # Size the trial so it lasts at least min_seconds.
    t0 = time.perf_counter()
    torch.mm(a, b)
    _sync(dev)
    one = max(time.perf_counter() - t0, 1e-6)
    iters = max(1, min(1000, int(min_seconds / one)))
    best = 0.0
    for _ in range(trials):
        t0 = time.perf_counter()
        for _ in range(iters):
            torch.mm(a, b)
        _sync(dev)
        best = max(best, flop * iters / (time.perf_counter() - t0))
    del a, b
    if on_gpu:
        torch.cuda.empty_cache()
    return {"matmul_flops": best, "matmul_dtype": str(dtype).replace("torch.", ""),
            "matmul_size": size, "matmul_device": dev.type}


def roofline_tok_s(matmul_flops: float, matmul_params: int) -> float:
    """Tokens per second a device could process if every token were pure matmul at peak."""
    return matmul_flops / (2.0 * matmul_params)


def roofline_fraction(total_tok_s: float, matmul_flops: float, matmul_params: int) -> float:
    """Achieved total (prompt + output) tok/s over the roofline."""
    return total_tok_s / roofline_tok_s(matmul_flops, matmul_params)
