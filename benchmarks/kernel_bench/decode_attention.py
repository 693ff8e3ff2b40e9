"""Microbenchmark: decode paged attention, achieved bytes/s over measured copy bandwidth.

Main point: batch 64, context 4096, 32 query / 8 KV heads, d=128, block 16, bf16 -> metric
`bw_fraction`. Bytes counted: every K/V byte of the contexts read once, plus queries, outputs and
block tables. Also a sweep over batch and context. Appends to benchmarks/results/decode_attention.jsonl.

    python benchmarks/kernel_bench/decode_attention.py [--no-sweep] [--tune]
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from benchmarks.kernel_bench._common import bench_ms, copy_bandwidth, random_block_tables  # noqa: E402
from benchmarks.record import append_result  # noqa: E402
from gpu_kernels.paged_attention import paged_attention_decode  # noqa: E402


def measure(batch: int, ctx: int, heads: int, kv_heads: int, head_dim: int, block_size: int,
            dtype: torch.dtype, copy_bw: float, kv_dtype: Optional[torch.dtype] = None,
            **kernel_args: Any) -> dict[str, float]:
    """`kv_dtype` (default `dtype`): float8_e4m3fn for an FP8 cache, counted at 1 byte."""
    dev = torch.device("cuda")
    blocks_per_seq = (ctx + block_size - 1) // block_size
    shape = (batch * blocks_per_seq, block_size, kv_heads, head_dim)
    key_cache = torch.randn(shape, dtype=dtype, device=dev).to(kv_dtype or dtype)
    value_cache = torch.randn(shape, dtype=dtype, device=dev).to(kv_dtype or dtype)
    tables = random_block_tables(batch, blocks_per_seq, dev)
    seq_lens = torch.full((batch,), ctx, dtype=torch.int32, device=dev)
    query = torch.randn(batch, heads, head_dim, dtype=dtype, device=dev)
    out = torch.empty_like(query)
    scale = head_dim ** -0.5

    def run() -> None:
        paged_attention_decode(query, key_cache, value_cache, tables, seq_lens, scale, ctx,
                               out=out, **kernel_args)

    run()
    torch.cuda.synchronize()
    ms = bench_ms(run)
    nbytes = (2 * batch * ctx * kv_heads * head_dim * key_cache.element_size()
              + 2 * query.numel() * query.element_size() + tables.numel() * 4)
    bw = nbytes / (ms * 1e-3)
    del key_cache, value_cache
    torch.cuda.empty_cache()
    return {"ms": ms, "gb_per_s": bw / 1e9, "bw_fraction": bw / copy_bw}


def measure_ragged(lens: list[int], max_len: int, copy_bw: float,
                   **kernel_args: Any) -> dict[str, float]:
    """Mixed context lengths (as in serving), the kernel sized for `max_len` like a CUDA graph."""
    dev = torch.device("cuda")
    batch, bs = len(lens), 16
    per_seq = -(-max_len // bs)
    shape = (batch * per_seq, bs, 8, 128)
    key_cache = torch.randn(shape, dtype=torch.bfloat16, device=dev)
    value_cache = torch.randn(shape, dtype=torch.bfloat16, device=dev)
    tables = random_block_tables(batch, per_seq, dev)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=dev)
    query = torch.randn(batch, 32, 128, dtype=torch.bfloat16, device=dev)
    out = torch.empty_like(query)
    ms = bench_ms(lambda: paged_attention_decode(query, key_cache, value_cache, tables, seq_lens,
                                                 128 ** -0.5, max_len, out=out, **kernel_args))
    bw = 2 * sum(lens) * 8 * 128 * 2 / (ms * 1e-3)
    del key_cache, value_cache
    torch.cuda.empty_cache()
    return {"ms": ms, "bw_fraction": bw / copy_bw}


def ragged_study(copy_bw: float) -> dict[str, float]:
    """Log-normal contexts (mean ~900, 16..3072) at batch 32/128: split count vs balance."""
    import random
    rng = random.Random(0)
    found = {}
    for batch in (32, 128):
        lens = [min(3072, max(16, int(rng.lognormvariate(6.5, 0.8)))) for _ in range(batch)]
        for splits in (None, 1, 2, 4, 8, 16):
            r = measure_ragged(lens, 8192, copy_bw, num_splits=splits)
            found[f"b{batch}_sp{splits}"] = round(r["bw_fraction"], 4)
            print(f"  ragged b={batch} mean ctx {sum(lens) / batch:.0f} max {max(lens)} "
                  f"splits {splits}: {r['ms'] * 1e3:.1f} us bw_fraction={r['bw_fraction']:.3f}")
    return found


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--kv-dtype", choices=["bf16", "fp8"], default="bf16",
                    help="fp8: an e4m3 cache (issue 13's FP8 KV target counts its bytes)")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--tune", action="store_true", help="also try tile/split variants")
    ap.add_argument("--ragged", action="store_true",
                    help="also mixed context lengths with split counts (serving-like)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    params = dict(batch=args.batch, ctx=args.ctx, heads=32, kv_heads=8, head_dim=128,
                  block_size=16, dtype="bfloat16")
    kv = torch.float8_e4m3fn if args.kv_dtype == "fp8" else torch.bfloat16
    if args.kv_dtype != "bf16":
        params["kv_dtype"] = args.kv_dtype
    copy_bw = copy_bandwidth(torch.device("cuda"))
    main_pt = measure(args.batch, args.ctx, 32, 8, 128, 16, torch.bfloat16, copy_bw, kv)
    print(f"copy bandwidth {copy_bw / 1e9:.0f} GB/s (read+write)")
    print(f"decode b={args.batch} ctx={args.ctx}: {main_pt['ms']:.3f} ms "
          f"{main_pt['gb_per_s']:.0f} GB/s bw_fraction={main_pt['bw_fraction']:.3f}")
    metrics: dict[str, Any] = {"bw_fraction": main_pt["bw_fraction"], "ms": main_pt["ms"],
                               "gb_per_s": main_pt["gb_per_s"],
                               "copy_gb_per_s": copy_bw / 1e9}
    if args.tune:
        tuned = {}
        for bn in (32, 64, 128):
            for warps in (4, 8):
                for stages in (2, 3, 4):
                    for splits in (None,):
                        key = f"bn{bn}_w{warps}_s{stages}_sp{splits}"
                        try:
                            r = measure(args.batch, args.ctx, 32, 8, 128, 16, torch.bfloat16,
                                        copy_bw, block_n=bn, num_warps=warps, num_stages=stages,
                                        num_splits=splits)
                        except Exception as exc:  # out of resources for a tile: skip it
                            print(f"  {key}: failed {type(exc).__name__}")
                            continue
                        tuned[key] = round(r["bw_fraction"], 4)
                        print(f"  {key}: {r['ms']:.3f} ms bw_fraction={r['bw_fraction']:.3f}")
        for batch, ctx in ((8, 4096), (1, 16384), (16, 2048)):
            for splits in (1, 2, 4, 8, 16, 32, 64):
                r = measure(batch, ctx, 32, 8, 128, 16, torch.bfloat16, copy_bw,
                            num_splits=splits)
                tuned[f"b{batch}_ctx{ctx}_sp{splits}"] = round(r["bw_fraction"], 4)
                print(f"  b{batch} ctx{ctx} sp{splits}: {r['ms']:.4f} ms "
                      f"bw_fraction={r['bw_fraction']:.3f}")
        metrics["tune"] = tuned
    if args.ragged:
        metrics["ragged"] = ragged_study(copy_bw)
    if not args.no_sweep:
        sweep = []
        for batch in (1, 8, 64, 256):
            for ctx in (1024, 4096, 16384):
                if batch * ctx > 256 * 4096:
                    continue
                r = measure(batch, ctx, 32, 8, 128, 16, torch.bfloat16, copy_bw, kv)
                sweep.append({"batch": batch, "ctx": ctx, "ms": round(r["ms"], 4),
                              "bw_fraction": round(r["bw_fraction"], 4)})
                print(f"  sweep b={batch:4d} ctx={ctx:6d}: {r['ms']:.3f} ms "
                      f"bw_fraction={r['bw_fraction']:.3f}")
        metrics["sweep"] = sweep
    append_result("decode_attention", params, metrics)
    return metrics


if __name__ == "__main__":
    main()
