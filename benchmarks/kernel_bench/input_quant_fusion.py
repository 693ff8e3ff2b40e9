"""Microbenchmark: the fused producers of W8A8 linear inputs against the unfused pair of
launches they replace, at Llama-3-8B widths (engine/quantization/input_quant.py).

Per M and kind (fp8 / int8): add + RMSNorm (hidden 4096) then `quant_rows`, against
`rms_norm_quant`; SiLU-and-mul (intermediate 14336) then `quant_rows`, against `silu_mul_quant`.
One JSON line per (M, kind), then the per-step saving over 32 layers (2 norms + 1 activation
each). Achieved bandwidth counts the fused kernel's bytes read and written.

    python benchmarks/kernel_bench/input_quant_fusion.py [--m 1 16 64 256 2048]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from benchmarks.kernel_bench._common import bench_ms  # noqa: E402
from gpu_kernels.activation import silu_and_mul  # noqa: E402
from gpu_kernels.rms_norm import rms_norm  # noqa: E402
from gpu_kernels.rms_norm_quant import rms_norm_quant  # noqa: E402
from gpu_kernels.row_quant import quant_rows  # noqa: E402
from gpu_kernels.silu_mul_quant import silu_mul_quant  # noqa: E402

HIDDEN, INTERMEDIATE, LAYERS = 4096, 14336, 32


def measure(m: int, kind: str) -> dict:
    dev, dt = torch.device("cuda"), torch.bfloat16
    x = torch.randn(m, HIDDEN, device=dev, dtype=dt)
    res = torch.randn_like(x)
    w = torch.randn(HIDDEN, device=dev, dtype=dt)
    g = torch.randn(m, 2 * INTERMEDIATE, device=dev, dtype=dt)
    r: dict = {"m": m, "kind": kind}
    r["norm_unfused_ms"] = bench_ms(lambda: quant_rows(rms_norm(x, w, 1e-5, res)[0], kind))
    r["norm_fused_ms"] = bench_ms(lambda: rms_norm_quant(x, w, 1e-5, kind, res))
    r["act_unfused_ms"] = bench_ms(lambda: quant_rows(silu_and_mul(g), kind))
    r["act_fused_ms"] = bench_ms(lambda: silu_mul_quant(g, kind))
    norm_bytes = m * HIDDEN * (2 + 2 + 2 + 1) + m * 4  # x, residual, new residual, q, scale
    act_bytes = m * INTERMEDIATE * (4 + 1) + m * 4
    r["norm_fused_gb_s"] = norm_bytes / (r["norm_fused_ms"] * 1e-3) / 1e9
    r["act_fused_gb_s"] = act_bytes / (r["act_fused_ms"] * 1e-3) / 1e9
    r["step_saving_ms"] = LAYERS * (2 * (r["norm_unfused_ms"] - r["norm_fused_ms"])
                                    + r["act_unfused_ms"] - r["act_fused_ms"])
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, nargs="+", default=[1, 16, 64, 256, 2048])
    args = ap.parse_args()
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}),
          flush=True)
    for m in args.m:
        for kind in ("fp8", "int8"):
            print(json.dumps(measure(m, kind)), flush=True)


if __name__ == "__main__":
    main()
