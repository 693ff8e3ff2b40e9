"""Microbenchmark: the W4A16 GEMM (gpu_kernels/w4a16_gemm.py) at Llama-3-8B projection shapes.

Per batch size M: kernel time, the weight floor (packed int4 weight + scales + zeros bytes over
the measured copy bandwidth) -> `over_floor` (time / floor; the target is <= 1.3 at M = 1), and
the bf16 dense matmul (`torch.matmul`) of the same shape -> `vs_bf16` (bf16 time / ours).
Appends `bench: "quantization"` records with params.case `w4a16_gemm_m<M>` to
benchmarks/results/quantization.jsonl. CUDA only.

    python benchmarks/kernel_bench/w4a16_gemm.py [--m 1 16 64 256] [--group 128] [--sweep]

`--sweep` also times a grid of tile configurations per shape and prints the best (to tune
`default_config` in gpu_kernels/w4a16_gemm.py); the records keep the default's times.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import itertools  # noqa: E402

from benchmarks.kernel_bench._common import bench_ms, copy_bandwidth  # noqa: E402
from benchmarks.record import append_result  # noqa: E402
from engine.quantization.base import pack_int32  # noqa: E402
from gpu_kernels.w4a16_gemm import GEMV_MAX_ROWS, w4a16_gemm  # noqa: E402

# (name, K, N) of Llama-3-8B's linear layers: fused qkv, o, fused gate_up, down.
SHAPES = [("qkv", 4096, 6144), ("o", 4096, 4096), ("gate_up", 4096, 28672),
          ("down", 14336, 4096)]


def sweep_configs(m: int) -> list[dict]:
    if m <= GEMV_MAX_ROWS:  # the GEMV kernel's knobs
        return [dict(BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=w, num_stages=st)
                for bn, bk, sk, w, st in itertools.product((64, 128, 256), (64, 128),
                                                           (1, 2, 4, 8, 16), (4,), (3,))]
    bms = (16,) if m <= 16 else (32, 64)
    grid = itertools.chain(
        itertools.product(bms, (64, 128), (64, 128), (1, 2, 4), (4,), (4,), (False, True)),
        itertools.product((128,), (128, 256), (128,), (1,), (8,), (3,), (False, True)))
    return [dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=w, num_stages=st,
                 PER_VALUE=pv)
            for bm, bn, bk, sk, w, st, pv in grid
            if not (pv and bk < 128)]  # PER_VALUE needs 16 words per step (4-bit: BLOCK_K 128)


def best_config(fn, m: int) -> tuple[float, dict]:
    best: tuple[float, dict] = (float("inf"), {})
    for cfg in sweep_configs(m):
        try:
            ms = bench_ms(lambda: fn(cfg), warmup_ms=10, rep_ms=60)
        except Exception as e:  # a tile the compiler refuses (shared memory)
            print(f"# {cfg}: {type(e).__name__}", file=sys.stderr)
            continue
        if ms < best[0]:
            best = (ms, cfg)
    return best


def measure(m: int, k: int, n: int, group: int, copy_bw: float,
            sweep: bool = False) -> dict[str, float]:
    dev = torch.device("cuda")
    q = torch.randint(0, 16, (k, n), dtype=torch.int32, device=dev)
    qw = pack_int32(q, 4, dim=0)
    g = k // group
    scales = (torch.rand(g, n, device=dev) * 0.01).bfloat16()
    zeros = torch.full((g, n), 8.0, device=dev).bfloat16()
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    dense = torch.randn(k, n, device=dev, dtype=torch.bfloat16)
    ms = bench_ms(lambda: w4a16_gemm(x, qw, scales, zeros, 4, group))
    bf16_ms = bench_ms(lambda: x @ dense)
    extra = {}
    if sweep:
        best_ms, cfg = best_config(lambda c: w4a16_gemm(x, qw, scales, zeros, 4, group, config=c),
                                   m)
        extra = {"best_ms": best_ms, "best_cfg": cfg}
    weight_bytes = qw.numel() * 4 + scales.numel() * 2 + zeros.numel() * 2
    floor_ms = weight_bytes / copy_bw * 1e3  # as benchmarks/kernel_bench/NOTES.md: bytes / copy bw
    return {"ms": ms, "bf16_ms": bf16_ms, "floor_ms": floor_ms, "over_floor": ms / floor_ms,
            "vs_bf16": bf16_ms / ms, **extra}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--sweep", action="store_true")
    args = ap.parse_args()
    copy_bw = copy_bandwidth(torch.device("cuda"))
    print(f"copy bandwidth {copy_bw / 1e9:.0f} GB/s")
    for m in args.m:
        total = {"ms": 0.0, "bf16_ms": 0.0, "floor_ms": 0.0}
        for name, k, n in SHAPES:
            r = measure(m, k, n, args.group, copy_bw, args.sweep)
            best = f"  best {r['best_ms']:.4f} {r['best_cfg']}" if args.sweep else ""
            print(f"M={m:4d} {name:8s} {r['ms']:.4f} ms  floor {r['floor_ms']:.4f}  "
                  f"x{r['over_floor']:.2f}  bf16 {r['bf16_ms']:.4f}{best}", flush=True)
            for key in total:
                total[key] += r[key]
        metrics = {**total, "over_floor": total["ms"] / total["floor_ms"],
                   "vs_bf16": total["bf16_ms"] / total["ms"], "copy_bw_gbs": copy_bw / 1e9}
        append_result("quantization", {"case": f"w4a16_gemm_m{m}", "group_size": args.group,
                                       "shapes": "llama3-8b qkv+o+gate_up+down"}, metrics)


if __name__ == "__main__":
    main()
