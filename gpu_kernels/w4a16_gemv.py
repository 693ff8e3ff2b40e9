"""Weight-only quantized GEMV (W4A16 / W8A16) for decode rows: out[m] = x[m] @ W, no tensor cores.

Same canonical layout as `w4a16_gemm.py` (qweight int32 [ceil(K / pf), N] packed along K, lowest
bits first; scales / zeros [G, N]). One program per (row, BLOCK_N columns, K split). A K step
loads a [BLOCK_K / pf, BLOCK_N] tile of packed words once (coalesced along N) and, for each of
the pf values a word holds, shifts it out and multiplies it by the matching activations
(x[k] for k = word * pf + j, a strided [words] vector) into an fp32 [words, BLOCK_N] accumulator:
five full-rate ALU operations per weight (`_small_int_to_float` instead of a conversion
instruction) and no layout change. The tensor-core tile kernel instead pads one row to 16 and
reshapes the unpacked tile through shared memory. H200, the four Llama-3-8B linears at M = 1:
tile kernel 5-8x the weight floor, this GEMV tuned 3.45x (measured with int-to-float
conversions; the bit trick came after, unmeasured).

When a K step lies inside one quantization group (`ALIGNED`), zero and scale enter once per step:
sum_k (q - z) s x = s (sum_k q x - z sum_k x). Otherwise each word row gathers its own group's.
Split-K partial results are combined in the same launch through `w4a16_gemm`'s workspace.
"""
from __future__ import annotations

from typing import Optional

import torch

from gpu_kernels._triton_utils import tl, triton

if triton is not None:
    from gpu_kernels.splitk import splitk_reduce

if triton is not None:

    @triton.jit
    def _small_int_to_float(q):
        """Exact float of 0 <= q < 2^23 without an int-to-float conversion (those issue at a
        fraction of the FP32 rate on Hopper): q's bits as the mantissa of 2^23, minus 2^23."""
        return (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0

    @triton.jit
    def _w4a16_gemv_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, ws_ptr, cnt_ptr, M, N, K,
                           group_size, stride_xm, stride_qk, stride_sg, stride_om,
                           BITS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           SPLIT_K: tl.constexpr, ALIGNED: tl.constexpr):
        row, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        PF: tl.constexpr = 32 // BITS
        WORDS: tl.constexpr = BLOCK_K // PF
        MASK: tl.constexpr = (1 << BITS) - 1
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        offs_w0 = tl.arange(0, WORDS)
        kw_total = (K + PF - 1) // PF
        x_row = x_ptr + row.to(tl.int64) * stride_xm
        acc = tl.zeros((WORDS, BLOCK_N), dtype=tl.float32)
        for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
            offs_w = k0 // PF + offs_w0
            packed = tl.load(qw_ptr + offs_w[:, None].to(tl.int64) * stride_qk + offs_n[None, :],
                             mask=(offs_w < kw_total)[:, None] & n_ok[None, :], other=0)
            if ALIGNED:
                part = tl.zeros((WORDS, BLOCK_N), dtype=tl.float32)
                xsum = tl.zeros((WORDS,), dtype=tl.float32)
                for j in tl.static_range(PF):
                    kk = offs_w * PF + j
                    xj = tl.load(x_row + kk, mask=kk < K, other=0.0).to(tl.float32)
                    qj = _small_int_to_float((packed >> (j * BITS)) & MASK)
                    part += qj * xj[:, None]
                    xsum += xj
                g = (k0 // group_size).to(tl.int64) * stride_sg
                s = tl.load(s_ptr + g + offs_n, mask=n_ok, other=0.0).to(tl.float32)
                z = tl.load(z_ptr + g + offs_n, mask=n_ok, other=0.0).to(tl.float32)
                acc += (part - xsum[:, None] * z[None, :]) * s[None, :]
            else:
                for j in tl.static_range(PF):
                    kk = offs_w * PF + j
                    k_ok = kk < K
                    xj = tl.load(x_row + kk, mask=k_ok, other=0.0).to(tl.float32)
                    qj = _small_int_to_float((packed >> (j * BITS)) & MASK)
                    g = (kk // group_size)[:, None].to(tl.int64) * stride_sg + offs_n[None, :]
                    gm = k_ok[:, None] & n_ok[None, :]
                    s = tl.load(s_ptr + g, mask=gm, other=0.0).to(tl.float32)
                    z = tl.load(z_ptr + g, mask=gm, other=0.0).to(tl.float32)
                    acc += (qj - z) * s * xj[:, None]
        res = tl.sum(acc, 0)
        out_ptrs = out_ptr + row.to(tl.int64) * stride_om + offs_n
        if SPLIT_K == 1:
            tl.store(out_ptrs, res.to(out_ptr.dtype.element_ty), mask=n_ok)
        else:  # split-K in one launch (gpu_kernels/splitk.py)
            ws_ptrs = ws_ptr + row.to(tl.int64) * N + offs_n
            tile = row * tl.num_programs(1) + pid_n
            total, last = splitk_reduce(res, ws_ptrs, n_ok, cnt_ptr, tile)
            if last:
                tl.store(out_ptrs, total.to(out_ptr.dtype.element_ty), mask=n_ok)


def default_gemv_config(m: int, n: int, k: int, bits: int, group: int) -> dict:
    """After the H200 sweep at Llama-3-8B shapes (gpu_kernels/tuned/ holds the per-shape table):
    wide N tiles with short K steps for wide outputs, narrow tiles with longer steps otherwise,
    K split until ~8 programs per SM, 3 stages (the first default, 128-wide tiles with 4 stages,
    ran 1.1-5x slower than these)."""
    pf = 32 // bits
    wide = n > 4096
    block_k = 64 if wide or bits == 8 else 128
    while group % block_k and block_k > 2 * pf:
        block_k //= 2
    cfg = {"BLOCK_N": 256 if wide else 64, "BLOCK_K": block_k, "num_warps": 4, "num_stages": 3}
    tiles = m * -(-n // cfg["BLOCK_N"])
    split = 1
    while split < 16 and tiles * split < 8 * 132 and k // (block_k * split * 2) >= 1:
        split *= 2
    cfg["SPLIT_K"] = split
    return cfg


def launch_gemv(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                zeros: torch.Tensor, bits: int, group_size: int, workspace,
                config: Optional[dict] = None) -> torch.Tensor:
    """Called by `w4a16_gemm` (which checks the shapes) for few rows; `workspace(elems, tiles)`
    gives its split-K buffers."""
    m, k = x.shape
    n = qweight.shape[1]
    pf = 32 // bits
    cfg = {**default_gemv_config(m, n, k, bits, group_size), **(config or {})}
    if cfg["BLOCK_K"] % pf or cfg["BLOCK_K"] // pf < 1:
        raise ValueError(f"BLOCK_K {cfg['BLOCK_K']} must be a multiple of {pf}")
    split = cfg.pop("SPLIT_K")
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    grid = (m, triton.cdiv(n, cfg["BLOCK_N"]), split)
    ws, cnt = workspace(m * n, m * grid[1]) if split > 1 else (out, out)
    _w4a16_gemv_kernel[grid](x, qweight, scales, zeros, out, ws, cnt, m, n, k, group_size,
                             x.stride(0), qweight.stride(0), scales.stride(0), out.stride(0),
                             BITS=bits, SPLIT_K=split, ALIGNED=group_size % cfg["BLOCK_K"] == 0,
                             **cfg)
    return out
