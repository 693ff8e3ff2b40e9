"""The scaled 8-bit GEMM (FP8 / INT8 W8A8) against its torch reference, every tile path."""
from __future__ import annotations

import pytest
import torch

from gpu_kernels.scaled_gemm import scaled_gemm, scaled_gemm_ref

FP8 = torch.float8_e4m3fn


def _operands(m, n, k, dtype, device):
    if dtype == torch.int8:
        a = torch.randint(-128, 128, (m, k), dtype=torch.int8)
        b = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    else:
        a = (torch.randn(m, k) * 40).clamp(-448, 448).to(FP8)
        b = (torch.randn(n, k) * 40).clamp(-448, 448).to(FP8)
    sa = torch.rand(m) * 1e-2 + 1e-4
    sb = torch.rand(n) * 1e-2 + 1e-4
    return [t.to(device) for t in (a, b, sa, sb)]


CONFIGS = [
    None,  # the heuristic for the shape
    {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 64, "SPLIT_K": 3},
    {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32, "SPLIT_K": 1},
]


@pytest.mark.parametrize("dtype", [torch.int8, FP8])
@pytest.mark.parametrize("m,n,k", [(1, 48, 96), (5, 40, 200), (17, 64, 130), (70, 33, 64)])
@pytest.mark.parametrize("cfg", range(len(CONFIGS)))
def test_matches_reference(device, dtype, m, n, k, cfg):
    a, b, sa, sb = _operands(m, n, k, dtype, device)
    bias = torch.randn(n, device=device).to(torch.bfloat16)
    for bi in (None, bias):
        out = scaled_gemm(a, b, sa, sb, bias=bi, out_dtype=torch.bfloat16, config=CONFIGS[cfg])
        ref = scaled_gemm_ref(a, b, sa, sb, bias=bi, out_dtype=torch.bfloat16)
        assert out.dtype == torch.bfloat16 and out.shape == (m, n)
        split = (CONFIGS[cfg] or {}).get("SPLIT_K", 1) > 1
        if dtype == torch.int8 and not split:
            # int32 accumulation is exact; the fp32 epilogue's rounding may differ by one bf16
            # step in rare elements on a GPU (seen once in 2310)
            diff = (out.float() - ref.float()).abs()
            assert bool((diff <= ref.float().abs() * 2 ** -7).all())
            assert float((diff > 0).float().mean()) < 0.01
        else:  # fp32 accumulation order (and split-K partial sums) differ from the reference
            torch.testing.assert_close(out.float(), ref.float(), rtol=1e-2, atol=1e-2)


def test_fp16_output_and_empty(device):
    a, b, sa, sb = _operands(3, 32, 64, torch.int8, device)
    out = scaled_gemm(a, b, sa, sb, out_dtype=torch.float16)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), scaled_gemm_ref(a, b, sa, sb, out_dtype=torch.float16)
                               .float(), rtol=0, atol=0)
    e = scaled_gemm(a[:0], b, sa[:0], sb)
    assert e.shape == (0, 32)


def test_bad_input(device):
    a, b, sa, sb = _operands(3, 32, 64, torch.int8, device)
    with pytest.raises(TypeError, match="8-bit"):
        scaled_gemm(a.float(), b, sa, sb)
    with pytest.raises(TypeError, match="8-bit"):
        scaled_gemm(a, b.to(torch.float32).to(FP8), sa, sb)
    with pytest.raises(ValueError, match="b \\[N, K\\]"):
        scaled_gemm(a, b[:, :32], sa, sb)
    with pytest.raises(ValueError, match="a_scale must be"):
        scaled_gemm(a, b, sa[:2], sb)
    with pytest.raises(TypeError, match="float32"):
        scaled_gemm(a, b, sa.double(), sb)
    with pytest.raises(ValueError, match="bias"):
        scaled_gemm(a, b, sa, sb, bias=torch.zeros(3, device=device))
