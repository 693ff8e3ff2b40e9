"""Microbenchmark: 16-bit linears at decode sizes (M <= 16), cuBLAS (`F.linear`) against the
Triton `skinny_gemm` over a sweep of tiles, at Llama-3-8B shapes (4 projections + LM head).

One JSON line per (M, shape) with both times, the weight floor (weight bytes / measured copy
bandwidth) and the best config; then per-M step totals (32 layers + LM head) for cuBLAS, the
best Triton config and the faster of the two per shape. `--write-tuned FILE` writes the table
`gpu_kernels/tuned_configs.py` reads (kernel "skinny_gemm", bits 16, group 0): the best config
where Triton beats cuBLAS by at least `--min-gain`, else `{"library": true}`.

    python benchmarks/kernel_bench/skinny_gemm.py [--m 1 2 4 8 16] [--write-tuned F]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from benchmarks.kernel_bench._common import bench_ms, print_device_header  # noqa: E402
from gpu_kernels.skinny_gemm import skinny_gemm  # noqa: E402

# (name, K, N, times per decode step)
SHAPES = [("qkv", 4096, 6144, 32), ("o", 4096, 4096, 32), ("gate_up", 4096, 28672, 32),
          ("down", 14336, 4096, 32), ("lm_head", 4096, 128256, 1)]
CONFIGS = [dict(BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=4, num_stages=st)
           for bn, bk, sk, st in itertools.product((16, 32, 64), (128, 256), (1, 2, 4), (3, 5))]


def measure(m: int, k: int, n: int, copy_bw: float, configs) -> dict:
    dev = torch.device("cuda")
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
    r: dict = {"m": m, "k": k, "n": n, "floor_ms": 2 * n * k / copy_bw * 1e3}
    r["cublas_ms"] = bench_ms(lambda: F.linear(x, w), warmup_ms=10, rep_ms=60)
    best = (float("inf"), None)
    for cfg in configs:
        try:
            ms = bench_ms(lambda: skinny_gemm(x, w, config=cfg), warmup_ms=10, rep_ms=60)
        except Exception as e:  # a config the compiler refuses: skip it
            print(f"# {cfg}: {type(e).__name__}", file=sys.stderr)
            continue
        best = min(best, (ms, cfg), key=lambda t: t[0])
    r["triton_ms"], r["triton_cfg"] = best
    ref = F.linear(x.float(), w.float())
    err = (skinny_gemm(x, w, config=best[1]).float() - ref).abs().max().item()
    r["triton_max_abs_err"] = err
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--fast", action="store_true", help="the kernel's default config only")
    ap.add_argument("--min-gain", type=float, default=0.03)
    ap.add_argument("--write-tuned")
    ap.add_argument("--output-json")
    args = ap.parse_args()
    copy_bw = print_device_header()
    rows = []
    for m in args.m:
        for name, k, n, times in SHAPES:
            r = {"shape": name, "times": times,
                 **measure(m, k, n, copy_bw, [{}] if args.fast else CONFIGS)}
            rows.append(r)
            print(json.dumps(r), flush=True)
    for m in args.m:
        sel = [r for r in rows if r["m"] == m]
        tot = {key: round(sum(r["times"] * r[key] for r in sel), 3)
               for key in ("floor_ms", "cublas_ms", "triton_ms")}
        tot["best_ms"] = round(sum(r["times"] * min(r["cublas_ms"], r["triton_ms"]) for r in sel), 3)
        print(json.dumps({"m": m, "per_step_ms": tot}), flush=True)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(rows, f)
    if args.write_tuned:
        entries = [{"m": r["m"], "n": r["n"], "k": r["k"], "bits": 16, "group": 0,
                    "config": (r["triton_cfg"] if r["triton_ms"] < (1 - args.min_gain)
                               * r["cublas_ms"] else {"library": True})} for r in rows]
        with open(args.write_tuned, "w") as f:
            json.dump({"kernel": "skinny_gemm", "device": torch.cuda.get_device_name(),
                       "entries": entries}, f, indent=1)


if __name__ == "__main__":
    main()
