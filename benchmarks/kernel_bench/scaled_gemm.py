"""Microbenchmark: 8-bit W8A8 GEMMs at Llama-3-8B projection shapes, to choose the FP8 / INT8
linear path per batch size (engine/quantization/fp8.py, w8a8.py).

Per M and shape: bf16 `torch.matmul`; FP8 `torch._scaled_mm` with row-wise scales (the current
path) and with per-tensor scales; INT8 `torch._int_mm` plus its torch epilogue; the Triton
`scaled_gemm` (FP8 and INT8) over a sweep of tile configurations (best reported, with its config);
the per-token activation quantization kernels. Weight floor = 8-bit weight bytes / measured copy
bandwidth. One JSON line per (M, shape), then per-M totals over the 4 shapes x 32 layers.

    python benchmarks/kernel_bench/scaled_gemm.py [--m 1 16 64 256 2048] [--output-json F]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from benchmarks.kernel_bench._common import bench_ms, print_device_header  # noqa: E402
from gpu_kernels.quant_fp8_rows import quant_fp8_rows  # noqa: E402
from gpu_kernels.quant_int8_rows import quant_int8_rows  # noqa: E402
from gpu_kernels.scaled_gemm import scaled_gemm  # noqa: E402

SHAPES = [("qkv", 4096, 6144), ("o", 4096, 4096), ("gate_up", 4096, 28672),
          ("down", 14336, 4096)]
FP8 = torch.float8_e4m3fn
SMALL = [dict(BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=sk, num_warps=w, num_stages=st)
         for bn, bk, sk, w, st in itertools.product((16, 32, 64), (128, 256, 512), (1, 4), (4,),
                                                    (4,))]
LARGE = [dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=1, num_warps=w, num_stages=st)
         for bm, bn, bk, w, st in ((64, 64, 128, 4, 4), (64, 128, 128, 4, 4), (128, 128, 128, 8, 3),
                                   (128, 128, 64, 4, 4), (128, 256, 64, 8, 3),
                                   (64, 256, 128, 8, 3), (128, 64, 128, 4, 4))]
WIDE = LARGE + [dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=1, num_warps=w, num_stages=st)
                for bm, bn, bk, w, st in ((128, 128, 128, 4, 4), (128, 128, 256, 8, 3),
                                          (64, 128, 256, 4, 4), (128, 64, 256, 4, 4),
                                          (256, 128, 128, 8, 3), (64, 128, 128, 4, 3),
                                          (128, 256, 128, 8, 3), (64, 64, 256, 4, 4),
                                          (128, 128, 128, 8, 4))]


def sweep(fn, configs) -> tuple[float, dict]:
    best = (float("inf"), {})
    for cfg in configs:
        try:
            ms = bench_ms(lambda: fn(cfg), warmup_ms=10, rep_ms=60)
        except Exception as e:  # a config the compiler refuses (shared memory): skip it
            print(f"# config {cfg}: {type(e).__name__}", file=sys.stderr)
            continue
        best = min(best, (ms, cfg), key=lambda t: t[0])
    return best


def measure(m: int, k: int, n: int, copy_bw: float, fast: bool, wide: bool = False,
            only_int8: bool = False) -> dict:
    dev = torch.device("cuda")
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
    w8 = (w * 20).clamp(-448, 448).to(FP8)
    wi = (w * 30).clamp(-128, 127).to(torch.int8)
    ws = torch.rand(n, device=dev) * 1e-2
    xq, xs = quant_fp8_rows(x)
    xi, xis = quant_int8_rows(x)
    one = torch.ones((), device=dev)
    r: dict = {"m": m, "k": k, "n": n, "floor_ms": n * k / copy_bw * 1e3}
    r["bf16_ms"] = bench_ms(lambda: x @ w.t())
    r["quant_fp8_ms"] = bench_ms(lambda: quant_fp8_rows(x))
    r["quant_int8_ms"] = bench_ms(lambda: quant_int8_rows(x))
    r["scaled_mm_rowwise_ms"] = bench_ms(lambda: torch._scaled_mm(
        xq, w8.t(), scale_a=xs.reshape(-1, 1), scale_b=ws.reshape(1, -1), out_dtype=torch.bfloat16))
    r["scaled_mm_tensor_ms"] = bench_ms(lambda: torch._scaled_mm(
        xq, w8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16))
    xp = xi if m > 16 else torch.cat([xi, xi.new_zeros(17 - m, k)])
    r["int_mm_ms"] = bench_ms(lambda: (torch._int_mm(xp, wi.t())[:m].float() * xis[:, None]
                                        * ws[None, :]).to(torch.bfloat16))
    configs = (SMALL if m <= 16 else WIDE if wide else LARGE) if not fast else [{}]
    if not only_int8:
        r["triton_fp8_ms"], r["triton_fp8_cfg"] = sweep(
            lambda c: scaled_gemm(xq, w8, xs, ws, config=c), configs)
    r["triton_int8_ms"], r["triton_int8_cfg"] = sweep(
        lambda c: scaled_gemm(xi, wi, xis, ws, config=c), configs)
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, nargs="+", default=[1, 16, 64, 256, 2048])
    ap.add_argument("--fast", action="store_true", help="the default config only, no sweep")
    ap.add_argument("--wide", action="store_true", help="more tile configs above 16 rows")
    ap.add_argument("--only-int8", action="store_true", help="sweep the INT8 kernel only")
    ap.add_argument("--output-json")
    args = ap.parse_args()
    copy_bw = print_device_header()
    rows = []
    for m in args.m:
        for name, k, n in SHAPES:
            r = {"shape": name, **measure(m, k, n, copy_bw, args.fast, args.wide, args.only_int8)}
            rows.append(r)
            print(json.dumps(r), flush=True)
    keys = [k for k in rows[0] if k.endswith("_ms")]
    for m in args.m:
        sel = [r for r in rows if r["m"] == m]
        tot = {k: round(32 * sum(r[k] for r in sel), 3) for k in keys}
        print(json.dumps({"m": m, "per_step_ms_32_layers": tot}), flush=True)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(rows, f)


if __name__ == "__main__":
    main()
