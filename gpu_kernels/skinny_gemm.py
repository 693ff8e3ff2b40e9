"""16-bit GEMM for decode-sized batches: out = x @ w^T (+ bias), x [M, K] with M <= 16, w [N, K].

At a few rows a linear layer is a weight stream: every weight byte is read once and used M
times. cuBLAS picks its kernels for that well at M = 1-2 but not at 3-16 rows (H200, Llama-3-8B
shape: a decode step at 4-8 rows took 0.3-0.4 ms more than at 2, see benchmarks/README.md). Here
one 16-row tile covers M, narrow N tiles give every SM several programs streaming the weight, and
long K ranges may be split across programs (`SPLIT_K`, reduced in the same launch through
gpu_kernels/splitk.py); `tl.dot` runs on tensor cores with fp32 accumulation, rounded once.
Tiles come from a tuned table (`tuned_configs.py`, kernel "skinny_gemm", bits 16, group 0;
written by `benchmarks/kernel_bench/skinny_gemm.py --sweep --write-tuned`) or the heuristic.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from gpu_kernels._triton_utils import (check_last_dim_contiguous, interpreting, require_triton,
                                       same_device, tl, triton)
from gpu_kernels.splitk import splitk_workspace

MAX_ROWS = 16
HALF_DTYPES = (torch.float16, torch.bfloat16)

if triton is not None:
    from gpu_kernels._triton_utils import round_to
    from gpu_kernels.splitk import splitk_reduce

    @triton.jit(do_not_specialize=["M"])  # one compiled kernel for every row count
    def _skinny_gemm_kernel(x_ptr, w_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr, M, N, K,
                            stride_xm, stride_wn, stride_om, HAS_BIAS: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            SPLIT_K: tl.constexpr, UPCAST: tl.constexpr):
        pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok, n_ok = offs_m < M, offs_n < N
        x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
        w_cols = w_ptr + offs_n[None, :].to(tl.int64) * stride_wn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        steps = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K)  # each split: one contiguous K range
        k_begin = pid_k * steps * BLOCK_K
        for i in range(steps):
            offs_k = k_begin + i * BLOCK_K + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            x = tl.load(x_rows + offs_k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_cols + offs_k[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            if UPCAST:  # the interpreter's dot mishandles bf16; products are exact in fp32
                acc += tl.dot(x.to(tl.float32), w.to(tl.float32))
            else:
                acc += tl.dot(x, w)
        o_mask = m_ok[:, None] & n_ok[None, :]
        out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
        last = True
        if SPLIT_K > 1:
            ws_ptrs = ws_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
            acc, last = splitk_reduce(acc, ws_ptrs, o_mask, cnt_ptr,
                                      pid_m * tl.num_programs(1) + pid_n)
        if last:
            if HAS_BIAS:
                acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            odt = out_ptr.dtype.element_ty
            tl.store(out_ptrs, round_to(acc, odt).to(odt), mask=o_mask)


def default_config(m: int, n: int, k: int) -> dict:
    """Narrow N tiles; K split until about four programs per SM stream the weight."""
    cfg = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 256, "num_warps": 4, "num_stages": 4}
    tiles = -(-n // cfg["BLOCK_N"])
    split = 1
    while tiles * split < 4 * 132 and k // (cfg["BLOCK_K"] * split * 2) >= 4:
        split *= 2
    cfg["SPLIT_K"] = split
    return cfg


def skinny_gemm(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None,
                config: Optional[dict] = None) -> torch.Tensor:
    """x [M, K] @ w [N, K]^T (+ bias [N]) -> [M, N] in x's dtype, M <= 16, fp16 / bf16."""
    require_triton(x, w)
    same_device(x, w, bias)
    if x.dtype not in HALF_DTYPES or w.dtype != x.dtype:
        raise TypeError(f"x and w must share a 16-bit dtype, got {x.dtype} / {w.dtype}")
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"x [M, K] and w [N, K] expected, got {tuple(x.shape)} / {tuple(w.shape)}")
    m, k = x.shape
    n = w.shape[0]
    if m > MAX_ROWS:
        raise ValueError(f"skinny_gemm takes at most {MAX_ROWS} rows, got {m}")
    if bias is not None and (bias.shape != (n,) or bias.dtype != x.dtype):
        raise ValueError(f"bias must be [{n}] {x.dtype}, got {tuple(bias.shape)} {bias.dtype}")
    check_last_dim_contiguous("x", x)
    check_last_dim_contiguous("w", w)
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    if config is None:
        from gpu_kernels.tuned_configs import shared_tuned_config
        config = shared_tuned_config("skinny_gemm", x.device, m, n, k, 16, 0)
    cfg = {**default_config(m, n, k), **(config or {})}
    split = cfg.pop("SPLIT_K")
    grid = (triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(n, cfg["BLOCK_N"]), split)
    ws, cnt = splitk_workspace(x.device, m * n, grid[0] * grid[1]) if split > 1 else (out, out)
    _skinny_gemm_kernel[grid](x, w, bias if bias is not None else out, out, ws, cnt, m, n, k,
                              x.stride(0), w.stride(0), out.stride(0), HAS_BIAS=bias is not None,
                              SPLIT_K=split, UPCAST=interpreting(), **cfg)
    return out


def skinny_gemm_ref(x: torch.Tensor, w: torch.Tensor,
                    bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """fp32 products and sums, rounded once."""
    return F.linear(x.float(), w.float(), None if bias is None else bias.float()).to(x.dtype)
