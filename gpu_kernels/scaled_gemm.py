"""Scaled 8-bit GEMM for W8A8 linear layers (FP8 e4m3 or INT8): out = (a @ b^T) * sa[m] * sb[n].

a [M, K] holds activations quantized per row (scale `a_scale` [M] fp32, from
`quant_fp8_rows` / `quant_int8_rows`), b [N, K] the weight quantized per output channel
(`b_scale` [N] fp32), both in the same 8-bit dtype. Each program computes a BLOCK_M x BLOCK_N tile
with `tl.dot` over K (fp8 x fp8 -> fp32, int8 x int8 -> int32, exact), then applies both scales
and the optional bias in the epilogue and writes the 16-bit output once: one launch per linear
where `torch._int_mm` needs a separate multiply, scale and cast (and M > 16), and where cuBLAS'
row-wise-scaled FP8 GEMM picks a 128 x 128 tile even for a one-row decode (H200: ~31 us per
Llama-3-8B linear at M = 1 and at M = 256 alike, 2.4x its weight-streaming time).

For small M (decode) one 16-row tile covers M and narrow BLOCK_N tiles give enough programs to
stream the weight; `SPLIT_K` > 1 cuts K across programs that add fp32 partial tiles atomically (the
output is then an fp32 buffer, scaled and cast afterwards). `config=` overrides the heuristic
(used by `benchmarks/kernel_bench/scaled_gemm.py` to sweep).
"""
from __future__ import annotations

from typing import Optional

import torch

from gpu_kernels._triton_utils import check_last_dim_contiguous, require_triton, same_device, tl, triton

EIGHT_BIT = (torch.float8_e4m3fn, torch.int8)

if triton is not None:
    from gpu_kernels._triton_utils import round_to

    @triton.jit
    def _scaled_gemm_kernel(a_ptr, b_ptr, sa_ptr, sb_ptr, bias_ptr, out_ptr, M, N, K,
                            stride_am, stride_bn, stride_om,
                            HAS_BIAS: tl.constexpr, IS_INT: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
        pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok, n_ok = offs_m < M, offs_n < N
        a_rows = a_ptr + offs_m[:, None].to(tl.int64) * stride_am
        b_rows = b_ptr + offs_n[None, :].to(tl.int64) * stride_bn
        if IS_INT:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            a_mask, b_mask = m_ok[:, None] & k_ok[None, :], k_ok[:, None] & n_ok[None, :]
            if IS_INT:
                a = tl.load(a_rows + offs_k[None, :], mask=a_mask, other=0)
                b = tl.load(b_rows + offs_k[:, None], mask=b_mask, other=0)
            else:
                a = tl.load(a_rows + offs_k[None, :], mask=a_mask, other=0.0)
                b = tl.load(b_rows + offs_k[:, None], mask=b_mask, other=0.0)
            acc += tl.dot(a, b)
        sa = tl.load(sa_ptr + offs_m, mask=m_ok, other=0.0)
        sb = tl.load(sb_ptr + offs_n, mask=n_ok, other=0.0)
        res = acc.to(tl.float32) * sa[:, None] * sb[None, :]
        out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
        o_mask = m_ok[:, None] & n_ok[None, :]
        if SPLIT_K == 1:
            if HAS_BIAS:
                res += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            odt = out_ptr.dtype.element_ty
            tl.store(out_ptrs, round_to(res, odt).to(odt), mask=o_mask)
        else:
            tl.atomic_add(out_ptrs, res, mask=o_mask)


def default_config(m: int, n: int, k: int) -> dict:
    """Tile sizes by M, from the H200 sweep at Llama-3-8B shapes (benchmarks/kernel_bench/
    scaled_gemm.py): decode rows take narrow N tiles and long K steps so that N / 32 programs
    stream the weight; 17-128 rows 64 x 128 x 256; to 256 rows 64 x 64 x 128; larger 128 x 128."""
    if m <= 16:
        return {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 512, "SPLIT_K": 1, "num_warps": 4,
                "num_stages": 4}
    if m <= 128:  # INT8 at M = 64: 3.7 ms for 32 layers vs 4.2 with 64 x 64 x 128 tiles
        return {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 256, "SPLIT_K": 1, "num_warps": 4,
                "num_stages": 4}
    if m <= 256:
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 128, "SPLIT_K": 1, "num_warps": 4,
                "num_stages": 4}
    return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "SPLIT_K": 1, "num_warps": 8,
            "num_stages": 3}


def scaled_gemm(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor,
                bias: Optional[torch.Tensor] = None, out_dtype: torch.dtype = torch.bfloat16,
                config: Optional[dict] = None) -> torch.Tensor:
    """(a [M, K] @ b [N, K]^T) * a_scale[:, None] * b_scale[None, :] (+ bias) -> [M, N] out_dtype.

    a and b are both float8_e4m3fn or both int8; scales are fp32 of shape [M] and [N]."""
    require_triton(a, b, a_scale, b_scale)
    same_device(a, b, a_scale, b_scale)
    if a.dtype not in EIGHT_BIT or b.dtype != a.dtype:
        raise TypeError(f"a and b must share an 8-bit dtype {EIGHT_BIT}, got {a.dtype}/{b.dtype}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a [M, K] and b [N, K] expected, got {tuple(a.shape)} / {tuple(b.shape)}")
    m, k = a.shape
    n = b.shape[0]
    if a_scale.shape != (m,) or b_scale.shape != (n,):
        raise ValueError(f"a_scale must be [{m}] and b_scale [{n}], got {tuple(a_scale.shape)} / "
                         f"{tuple(b_scale.shape)}")
    if a_scale.dtype != torch.float32 or b_scale.dtype != torch.float32:
        raise TypeError("a_scale and b_scale must be float32")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must be [{n}], got {tuple(bias.shape)}")
    check_last_dim_contiguous("a", a)
    check_last_dim_contiguous("b", b)
    cfg = {**default_config(m, n, k), **(config or {})}
    split_k = cfg.pop("SPLIT_K")
    if split_k > 1:
        out = torch.zeros(m, n, dtype=torch.float32, device=a.device)
    else:
        out = torch.empty(m, n, dtype=out_dtype, device=a.device)
    if m == 0:
        return out.to(out_dtype)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(n, cfg["BLOCK_N"]), split_k)
    _scaled_gemm_kernel[grid](a, b, a_scale.contiguous(), b_scale.contiguous(),
                              bias if bias is not None else out, out, m, n, k,
                              a.stride(0), b.stride(0), out.stride(0),
                              HAS_BIAS=bias is not None, IS_INT=a.dtype == torch.int8,
                              SPLIT_K=split_k, **cfg)
    if split_k > 1:
        if bias is not None:
            out += bias.float()
        out = out.to(out_dtype)
    return out


def scaled_gemm_ref(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor,
                    b_scale: torch.Tensor, bias: Optional[torch.Tensor] = None,
                    out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Torch reference: exact integer products for int8 (float64), fp32 for fp8."""
    if a.dtype == torch.int8:
        acc = (a.double() @ b.double().t()).float()
    else:
        acc = a.float() @ b.float().t()
    out = acc * a_scale[:, None] * b_scale[None, :]
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)
