"""Microbenchmark: prefill paged attention against torch SDPA (flash backend).

8 sequences x 2048 tokens, 32 query / 8 KV heads, d=128, bf16, causal. SDPA runs on contiguous
[B, H, S, D] tensors (GQA through `enable_gqa`, or K/V expanded to all heads when that is not
supported); ours reads K/V from the paged cache through scattered block tables. Metric
`speedup_vs_sdpa` = SDPA time / our time. Appends to benchmarks/results/prefill_attention.jsonl.

    python benchmarks/kernel_bench/prefill_attention.py [--tune]
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from benchmarks.kernel_bench._common import bench_ms, random_block_tables  # noqa: E402
from benchmarks.record import append_result  # noqa: E402
from gpu_kernels.prefill_attention import prefill_attention  # noqa: E402


def _sdpa_fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[Callable, str]:
    """Flash-backend SDPA on [B, H, S, D]; native GQA if the backend takes it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def gqa() -> torch.Tensor:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    try:
        gqa()
        return gqa, "enable_gqa"
    except Exception:  # older torch or flash without GQA: expand K/V heads outside the timing
        group = q.shape[1] // k.shape[1]
        ke, ve = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)

        def expanded() -> torch.Tensor:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, ke, ve, is_causal=True)

        expanded()
        return expanded, "expanded_kv"


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--tune", action="store_true", help="also try tile variants")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    dev, dtype = torch.device("cuda"), torch.bfloat16
    b, s, h, kvh, d, bs = args.batch, args.seq, 32, 8, 128, 16
    q = torch.randn(b, h, s, d, dtype=dtype, device=dev)
    k = torch.randn(b, kvh, s, d, dtype=dtype, device=dev)
    v = torch.randn(b, kvh, s, d, dtype=dtype, device=dev)

    # The same K/V laid out as a paged cache with scattered blocks.
    blocks_per_seq = s // bs
    tables = random_block_tables(b, blocks_per_seq, dev)
    key_cache = torch.empty(b * blocks_per_seq, bs, kvh, d, dtype=dtype, device=dev)
    value_cache = torch.empty_like(key_cache)
    flat = tables.long().view(-1)
    key_cache[flat] = k.permute(0, 2, 1, 3).reshape(b * blocks_per_seq, bs, kvh, d)
    value_cache[flat] = v.permute(0, 2, 1, 3).reshape(b * blocks_per_seq, bs, kvh, d)
    query = q.permute(0, 2, 1, 3).reshape(b * s, h, d).contiguous()
    seq_lens = torch.full((b,), s, dtype=torch.int32, device=dev)
    qsl = torch.arange(0, (b + 1) * s, s, dtype=torch.int32, device=dev)
    out = torch.empty_like(query)
    scale = d ** -0.5

    def ours(config: Optional[dict[str, int]] = None) -> Callable[[], Any]:
        return lambda: prefill_attention(query, key_cache, value_cache, tables, seq_lens, qsl,
                                         scale, s, out=out, num_query_tokens=b * s,
                                         config=config)

    sdpa, sdpa_mode = _sdpa_fn(q, k, v)
    ref = sdpa().permute(0, 2, 1, 3).reshape(b * s, h, d)
    ours()()
    err = float((out.double() - ref.double()).norm() / ref.double().norm())
    flops = 4 * b * h * d * s * (s + 1) / 2  # causal: half the score matrix, two products
    t_sdpa = bench_ms(sdpa)
    t_ours = bench_ms(ours())
    metrics: dict[str, Any] = {
        "speedup_vs_sdpa": t_sdpa / t_ours, "ms": t_ours, "sdpa_ms": t_sdpa,
        "tflops": flops / (t_ours * 1e-3) / 1e12, "sdpa_tflops": flops / (t_sdpa * 1e-3) / 1e12,
        "rel_err_vs_sdpa": err, "sdpa_mode": sdpa_mode,
    }
    print(f"prefill {b}x{s} h={h}/{kvh} d={d}: ours {t_ours:.3f} ms "
          f"({metrics['tflops']:.0f} TFLOP/s), sdpa flash {t_sdpa:.3f} ms "
          f"({metrics['sdpa_tflops']:.0f} TFLOP/s) speedup={metrics['speedup_vs_sdpa']:.3f} "
          f"rel_err={err:.2e} [{sdpa_mode}]")
    if args.tune:
        tuned = {}
        for bm, bn, warps, stages in [(128, 32, 4, 2), (128, 32, 4, 3), (128, 32, 4, 4),
                                      (128, 64, 4, 2), (128, 64, 8, 2), (128, 64, 8, 3),
                                      (128, 128, 8, 2), (128, 128, 8, 3), (64, 64, 4, 2),
                                      (64, 64, 4, 3), (64, 32, 4, 3), (64, 128, 4, 3)]:
            key = f"m{bm}_n{bn}_w{warps}_s{stages}"
            cfg = dict(block_m=bm, block_n=bn, num_warps=warps, num_stages=stages)
            try:
                ours(cfg)()
                t = bench_ms(ours(cfg))
            except Exception as exc:  # out of shared memory for a tile: skip it
                print(f"  {key}: failed {type(exc).__name__}")
                continue
            tuned[key] = round(t_sdpa / t, 4)
            print(f"  {key}: {t:.3f} ms speedup={t_sdpa / t:.3f}")
        metrics["tune"] = tuned
    append_result("prefill_attention", dict(batch=b, seq=s, heads=h, kv_heads=kvh, head_dim=d,
                                            block_size=bs, dtype="bfloat16", causal=True),
                  metrics)
    return metrics


if __name__ == "__main__":
    main()
