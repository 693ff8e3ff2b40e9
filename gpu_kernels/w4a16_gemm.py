"""Mixed-precision GEMM for weight-only quantized layers (W4A16 / W8A16): out = x @ W with W
dequantized inside the K loop, never materialised.

Weights come in the canonical layout of `engine/quantization/weight_only.py`: `qweight` int32
[ceil(K / pf), N] (pf = 32 // bits values per word along K, lowest bits first), `scales` and
`zeros` [G, N] with w[k, n] = (q[k, n] - zeros[g, n]) * scales[g, n], g = k // group_size.

Each program computes a BLOCK_M x BLOCK_N output tile. Per K step it loads BLOCK_K / pf packed
words per column once and unpacks them in registers (a broadcast shift into [words, pf, N], then
a reshape to [BLOCK_K, N]). When a K step lies inside one quantization group (`ALIGNED`:
BLOCK_K divides the group size) the group's zero and scale are loaded once per step as [N] rows,
the dot runs on the small integers (q - zero) exactly in the activation dtype, and the scale is
applied to the fp32 partial product: acc += (x @ (q - z)) * s. Otherwise each K row gathers its
own group's zero and scale (any group size). For the small-M decode shapes the K loop is split
over SPLIT_K programs (split-K), so that enough programs stream the weight when N / BLOCK_N alone
gives few; they add fp32 partial tiles into a workspace and the last to arrive writes the tile,
all in one launch (gpu_kernels/splitk.py). `config=` overrides the tile heuristic (swept by
`benchmarks/kernel_bench/w4a16_gemm.py --sweep`).
"""
from __future__ import annotations

from typing import Optional

import torch

from gpu_kernels._triton_utils import FLOAT_DTYPES, check_dtype, require_triton, same_device, tl, triton
from gpu_kernels.splitk import splitk_workspace

if triton is not None:
    from gpu_kernels.splitk import splitk_reduce

if triton is not None:

    @triton.jit
    def _w4a16_gemm_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, ws_ptr, cnt_ptr, M, N, K,
                           group_size,
                           stride_xm, stride_qk, stride_sg, stride_om,
                           BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, ALIGNED: tl.constexpr,
                           PER_VALUE: tl.constexpr, IEEE: tl.constexpr):
        pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        PF: tl.constexpr = 32 // BITS
        WORDS: tl.constexpr = BLOCK_K // PF
        MASK: tl.constexpr = (1 << BITS) - 1
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok, n_ok = offs_m < M, offs_n < N
        shifts = tl.arange(0, PF) * BITS
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        dt = x_ptr.dtype.element_ty
        kw_total = (K + PF - 1) // PF
        for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            offs_w = k0 // PF + tl.arange(0, WORDS)
            packed = tl.load(qw_ptr + offs_w[:, None].to(tl.int64) * stride_qk + offs_n[None, :],
                             mask=(offs_w < kw_total)[:, None] & n_ok[None, :], other=0)
            if not PER_VALUE:
                x = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :],
                            mask=m_ok[:, None] & k_ok[None, :], other=0.0)
                q = (packed[:, None, :] >> shifts[None, :, None]) & MASK
                q = tl.reshape(q, (BLOCK_K, BLOCK_N)).to(tl.float32)
            if PER_VALUE:  # one dot per value slot of the words: no reshape of the unpacked tile
                g = (k0 // group_size).to(tl.int64) * stride_sg
                s = tl.load(s_ptr + g + offs_n, mask=n_ok, other=0.0).to(tl.float32)
                z = tl.load(z_ptr + g + offs_n, mask=n_ok, other=0.0).to(tl.float32)
                part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for j in tl.static_range(PF):
                    kk = offs_w * PF + j
                    xj = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + kk[None, :],
                                 mask=m_ok[:, None] & (kk < K)[None, :], other=0.0)
                    wj = (((packed >> (j * BITS)) & MASK).to(tl.float32) - z[None, :]).to(dt)
                    if IEEE:
                        part += tl.dot(xj, wj, input_precision="ieee")
                    else:
                        part += tl.dot(xj, wj)
                acc += part * s[None, :]
            elif ALIGNED:
                g = (k0 // group_size).to(tl.int64) * stride_sg
                s = tl.load(s_ptr + g + offs_n, mask=n_ok, other=0.0).to(tl.float32)
                z = tl.load(z_ptr + g + offs_n, mask=n_ok, other=0.0).to(tl.float32)
                # rows past K multiply zero activations: any value is fine there
                w = (q - z[None, :]).to(dt)
                if IEEE:
                    part = tl.dot(x, w, input_precision="ieee")
                else:
                    part = tl.dot(x, w)
                acc += part * s[None, :]
            else:
                g = (offs_k // group_size)[:, None].to(tl.int64) * stride_sg + offs_n[None, :]
                wk_mask = k_ok[:, None] & n_ok[None, :]
                s = tl.load(s_ptr + g, mask=wk_mask, other=0.0).to(tl.float32)
                z = tl.load(z_ptr + g, mask=wk_mask, other=0.0).to(tl.float32)
                w = ((q - z) * s).to(dt)
                if IEEE:
                    acc += tl.dot(x, w, input_precision="ieee")
                else:
                    acc += tl.dot(x, w)
        out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
        o_mask = m_ok[:, None] & n_ok[None, :]
        if SPLIT_K == 1:
            tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=o_mask)
        else:  # split-K in one launch (gpu_kernels/splitk.py)
            ws_ptrs = ws_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
            tile = pid_m * tl.num_programs(1) + pid_n
            total, last = splitk_reduce(acc, ws_ptrs, o_mask, cnt_ptr, tile)
            if last:
                tl.store(out_ptrs, total.to(out_ptr.dtype.element_ty), mask=o_mask)


GEMV_MAX_ROWS = 4  # up to this many rows: the CUDA-core GEMV (w4a16_gemv.py)


def default_config(m: int, n: int, k: int, bits: int, group: int) -> dict:
    """Tiles by M; decode sizes split K until about 4 programs per SM stream the weight."""
    if m <= 16:
        cfg = {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4, "num_stages": 4}
    elif m <= 64:
        cfg = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 4}
    else:
        cfg = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3}
    if bits == 8:
        cfg["BLOCK_K"] = min(cfg["BLOCK_K"], 64)
    while group % cfg["BLOCK_K"] and cfg["BLOCK_K"] > 32:  # stay inside one group per step
        cfg["BLOCK_K"] //= 2
    tiles = -(-m // cfg["BLOCK_M"]) * -(-n // cfg["BLOCK_N"])
    split = 1
    while m <= 64 and tiles * split < 4 * 132 and k // (cfg["BLOCK_K"] * split * 2) >= 4:
        split *= 2
    cfg["SPLIT_K"] = split
    return cfg


def w4a16_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               bits: int, group_size: int, split_k: int = 0,
               config: Optional[dict] = None, gemv: Optional[bool] = None) -> torch.Tensor:
    """x [M, K] @ dequant(qweight, scales, zeros) -> [M, N] in x's dtype (see module docstring).

    `split_k` 0 picks one from the shape; 1 disables it. `config` overrides the tile sizes (by
    default a tuned table's entry, `tuned_configs.py`, else the heuristic). `gemv`: use
    `w4a16_gemv.py` (default: a config without BLOCK_M, or up to GEMV_MAX_ROWS rows)."""
    require_triton(x, qweight, scales, zeros)
    same_device(x, qweight, scales, zeros)
    check_dtype("x", x, FLOAT_DTYPES)
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if qweight.dtype != torch.int32 or qweight.dim() != 2:
        raise ValueError("qweight must be a 2-D int32 tensor")
    if x.dim() != 2:
        raise ValueError(f"x must be [M, K], got {tuple(x.shape)}")
    m, k = x.shape
    pf = 32 // bits
    n = qweight.shape[1]
    if qweight.shape[0] != -(-k // pf):
        raise ValueError(f"qweight {tuple(qweight.shape)} does not hold K={k} rows of {bits} bits")
    num_groups = -(-k // group_size)
    if scales.shape != (num_groups, n) or zeros.shape != (num_groups, n):
        raise ValueError(f"scales {tuple(scales.shape)} / zeros {tuple(zeros.shape)} must be "
                         f"[{num_groups}, {n}] for K={k}, group_size={group_size}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    qweight, scales, zeros = qweight.contiguous(), scales.contiguous(), zeros.contiguous()
    if config is None and m > 0:
        from gpu_kernels.tuned_configs import shared_tuned_config
        config = shared_tuned_config("w4a16_gemm", x.device, m, n, k, bits, group_size)
    if gemv is None:
        gemv = m <= GEMV_MAX_ROWS if config is None else "BLOCK_M" not in config
    if gemv and m > 0:
        from gpu_kernels.w4a16_gemv import launch_gemv
        cfg = dict(config or {})
        if split_k:
            cfg["SPLIT_K"] = split_k
        return launch_gemv(x, qweight, scales, zeros, bits, group_size,
                           lambda elems, tiles: splitk_workspace(x.device, elems, tiles), cfg)
    cfg = {**default_config(m, n, k, bits, group_size), **(config or {})}
    if split_k:
        cfg["SPLIT_K"] = split_k
    if cfg["BLOCK_K"] % pf or cfg["BLOCK_K"] < 16:
        raise ValueError(f"BLOCK_K {cfg['BLOCK_K']} must be a multiple of {pf} and >= 16")
    split = cfg.pop("SPLIT_K")
    aligned = group_size % cfg["BLOCK_K"] == 0
    # PER_VALUE needs one group per step and >= 16 words per step (the dots' K)
    per_value = bool(cfg.pop("PER_VALUE", False)) and aligned and cfg["BLOCK_K"] // pf >= 16
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    grid = (triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(n, cfg["BLOCK_N"]), split)
    ws, cnt = splitk_workspace(x.device, m * n, grid[0] * grid[1]) if split > 1 else (out, out)
    _w4a16_gemm_kernel[grid](x, qweight, scales, zeros, out, ws, cnt, m, n, k, group_size,
                             x.stride(0), qweight.stride(0), scales.stride(0), out.stride(0),
                             BITS=bits, SPLIT_K=split, ALIGNED=aligned, PER_VALUE=per_value,
                             IEEE=x.dtype == torch.float32, **cfg)
    return out


def w4a16_gemm_ref(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                   zeros: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Dequantize the whole weight in fp32, then one matmul."""
    k = x.shape[1]
    shifts = torch.arange(0, 32, bits, dtype=torch.int32, device=qweight.device)
    q = ((qweight.unsqueeze(1) >> shifts[None, :, None]) & ((1 << bits) - 1))
    q = q.reshape(-1, qweight.shape[1])[:k]
    g = torch.arange(k, device=x.device) // group_size
    w = (q.float() - zeros.float()[g]) * scales.float()[g]
    return (x.float() @ w).to(x.dtype)
