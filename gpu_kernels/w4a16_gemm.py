"""Mixed-precision GEMM for weight-only quantized layers (W4A16 / W8A16): out = x @ W with W
dequantized inside the K loop, never materialised.

Weights come in the canonical layout of `engine/quantization/weight_only.py`: `qweight` int32
[ceil(K / pf), N] (pf = 32 // bits values per word along K, lowest bits first), `scales` and
`zeros` [G, N] with w[k, n] = (q[k, n] - zeros[g, n]) * scales[g, n], g = k // group_size.
Each program computes a BLOCK_M x BLOCK_N tile of the output, loading one int32 row per pf
input rows and the group's scale/zero rows per K step (the GPTQ "dequantize in registers"
scheme, Frantar et al. 2022). For the small-M decode shapes the K loop is split over SPLIT_K
programs whose fp32 partial tiles are added atomically (split-K), so enough programs run to fill
the GPU when M x N alone gives few tiles.
"""
from __future__ import annotations

import torch

from gpu_kernels._triton_utils import FLOAT_DTYPES, check_dtype, require_triton, same_device, tl, triton

if triton is not None:

    @triton.jit
    def _w4a16_gemm_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, M, N, K, group_size,
                           stride_xm, stride_qk, stride_sg, stride_om,
                           BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, IEEE: tl.constexpr):
        pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        PF: tl.constexpr = 32 // BITS
        MASK: tl.constexpr = (1 << BITS) - 1
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok, n_ok = offs_m < M, offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        dt = x_ptr.dtype.element_ty
        for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            x = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :],
                        mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            wk_mask = k_ok[:, None] & n_ok[None, :]
            packed = tl.load(qw_ptr + (offs_k // PF)[:, None].to(tl.int64) * stride_qk
                             + offs_n[None, :], mask=wk_mask, other=0)
            q = (packed >> ((offs_k % PF) * BITS)[:, None]) & MASK
            g = (offs_k // group_size)[:, None].to(tl.int64) * stride_sg + offs_n[None, :]
            s = tl.load(s_ptr + g, mask=wk_mask, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + g, mask=wk_mask, other=0.0).to(tl.float32)
            w = ((q.to(tl.float32) - z) * s).to(dt)
            if IEEE:
                acc += tl.dot(x, w, input_precision="ieee")
            else:
                acc += tl.dot(x, w)
        out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
        o_mask = m_ok[:, None] & n_ok[None, :]
        if SPLIT_K == 1:
            tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=o_mask)
        else:
            tl.atomic_add(out_ptrs, acc, mask=o_mask)


def w4a16_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               bits: int, group_size: int, split_k: int = 0) -> torch.Tensor:
    """x [M, K] @ dequant(qweight, scales, zeros) -> [M, N] in x's dtype (see module docstring).

    `split_k` 0 picks one from the shape (split-K for M <= 16); 1 disables it."""
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
    block_m = 16 if m <= 16 else (32 if m <= 32 else 64)
    block_n, block_k = 64, 64 if bits == 4 else 32
    if split_k == 0:
        split_k = max(1, min(8, k // (4 * block_k))) if m <= 16 else 1
    out_dtype = torch.float32 if split_k > 1 else x.dtype
    alloc = torch.zeros if split_k > 1 else torch.empty
    out = alloc((m, n), dtype=out_dtype, device=x.device)
    if m == 0:
        return out.to(x.dtype)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n), split_k)
    _w4a16_gemm_kernel[grid](x, qweight, scales, zeros, out, m, n, k, group_size,
                             x.stride(0), qweight.stride(0), scales.stride(0), out.stride(0),
                             BITS=bits, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                             SPLIT_K=split_k, IEEE=x.dtype == torch.float32)
    return out.to(x.dtype) if split_k > 1 else out


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
