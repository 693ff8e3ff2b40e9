"""Microbenchmark: fused MoE (gpu_kernels/fused_moe.py) against the per-expert torch loop.

Mixtral-8x7B expert shape by default (hidden 4096, expert intermediate 14336, 8 experts, top-2,
bf16) over a sweep of token counts. Reports milliseconds of both, the kernel's speedup and its
achieved TFLOP/s (2 * 3 * T * K * H * I FLOPs) and weight bandwidth (bytes of the experts
touched, read once). Appends to benchmarks/results/fused_moe.jsonl. CUDA only.

    python benchmarks/kernel_bench/fused_moe.py [--tokens 1,16,64,256,1024,4096] [--experts 8 --top-k 2]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from benchmarks.kernel_bench._common import bench_ms  # noqa: E402
from benchmarks.record import append_result  # noqa: E402
from gpu_kernels.fused_moe import fused_moe  # noqa: E402
from gpu_kernels.fused_moe_ref import fused_moe_ref, select_experts  # noqa: E402


def measure(tokens: int, hidden: int, inter: int, experts: int, top_k: int,
            w13: torch.Tensor, w2: torch.Tensor) -> dict[str, float]:
    dev = w13.device
    x = torch.randn(tokens, hidden, dtype=w13.dtype, device=dev)
    weights, ids = select_experts(torch.randn(tokens, experts, device=dev), top_k, True)
    weights = weights.to(w13.dtype)
    got = fused_moe(x, w13, w2, weights, ids)
    want = fused_moe_ref(x, w13, w2, weights, ids)
    err = float((got.float() - want.float()).norm() / want.float().norm())
    ms_fused = bench_ms(lambda: fused_moe(x, w13, w2, weights, ids))
    ms_loop = bench_ms(lambda: fused_moe_ref(x, w13, w2, weights, ids))
    used = int(torch.unique(ids).numel())
    flops = 2 * 3 * tokens * top_k * hidden * inter
    nbytes = used * 3 * hidden * inter * w13.element_size()
    return {"ms_fused": ms_fused, "ms_torch_loop": ms_loop, "speedup": ms_loop / ms_fused,
            "tflops": flops / (ms_fused * 1e-3) / 1e12,
            "weight_gbps": nbytes / (ms_fused * 1e-3) / 1e9, "rel_err": err}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", default="1,16,64,256,1024,4096")
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--inter", type=int, default=14336)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    args = ap.parse_args()
    dev = torch.device("cuda")
    w13 = torch.randn(args.experts, 2 * args.inter, args.hidden, dtype=torch.bfloat16,
                      device=dev) * 0.02
    w2 = torch.randn(args.experts, args.hidden, args.inter, dtype=torch.bfloat16,
                     device=dev) * 0.02
    for t in (int(v) for v in args.tokens.split(",")):
        m = measure(t, args.hidden, args.inter, args.experts, args.top_k, w13, w2)
        params = {"tokens": t, "hidden": args.hidden, "inter": args.inter,
                  "experts": args.experts, "top_k": args.top_k, "dtype": "bfloat16"}
        append_result("fused_moe", params, m)
        print(f"T={t:5d}: fused {m['ms_fused']:.3f} ms, torch loop {m['ms_torch_loop']:.3f} ms "
              f"({m['speedup']:.2f}x), {m['tflops']:.0f} TFLOP/s, {m['weight_gbps']:.0f} GB/s, "
              f"rel_err {m['rel_err']:.1e}")


if __name__ == "__main__":
    main()
