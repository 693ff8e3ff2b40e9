"""Shared pieces of the kernel microbenchmarks: timing, copy bandwidth, paged inputs."""
from __future__ import annotations

import torch


def bench_ms(fn, warmup_ms: int = 50, rep_ms: int = 300) -> float:
    """Median time of fn() in milliseconds, by CUDA events (triton.testing.do_bench)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def print_device_header() -> float:
    """Print the device, torch version and measured copy bandwidth as one JSON line; returns the
    bandwidth in bytes/s (for weight floors)."""
    import json

    bw = copy_bandwidth(torch.device("cuda"))
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      "copy_bw_gb_s": bw / 1e9}), flush=True)
    return bw


def copy_bandwidth(device: torch.device, nbytes: int = 2 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    del src, dst
    return 2 * nbytes / (ms * 1e-3)


def random_block_tables(num_seqs: int, blocks_per_seq: int, device: torch.device) -> torch.Tensor:
    """Each sequence gets its own blocks, scattered over the pool in random order."""
    perm = torch.randperm(num_seqs * blocks_per_seq, device=device, dtype=torch.int64)
    return perm.view(num_seqs, blocks_per_seq).to(torch.int32)
