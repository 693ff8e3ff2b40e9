"""Fused (residual add +) RMSNorm + per-token FP8 / INT8 quantization, bit for bit against the
unfused path: the RMSNorm kernel, then the quantization kernel or its torch reference."""
from __future__ import annotations

import pytest
import torch

from gpu_kernels.rms_norm import rms_norm
from gpu_kernels.rms_norm_quant import rms_norm_quant, rms_norm_quant_ref
from gpu_kernels.row_quant import Q_DTYPES, quant_rows
from gpu_kernels.quant_fp8_rows import quant_fp8_rows_ref
from gpu_kernels.quant_int8_rows import quant_int8_rows_ref

QUANT_REF = {"fp8": quant_fp8_rows_ref, "int8": quant_int8_rows_ref}


def _bits(q: torch.Tensor) -> torch.Tensor:
    return q.view(torch.uint8) if q.dtype == torch.float8_e4m3fn else q


def _inputs(rows: int, n: int, dtype: torch.dtype, with_residual: bool, device: str):
    x = (torch.randn(rows, n) * torch.logspace(-2, 1, max(rows, 1))[:rows, None]).to(dtype)
    w = torch.randn(n).to(dtype)
    res = torch.randn(rows, n).to(dtype) if with_residual else None
    if rows > 1:  # a row whose input (and so output) is all zero
        x[1] = 0
        if res is not None:
            res[1] = 0
    return x.to(device), w.to(device), None if res is None else res.to(device)


@pytest.mark.parametrize("kind", ["fp8", "int8"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("n", [64, 100])
def test_equals_unfused(kind, dtype, with_residual, n, device):
    x, w, res = _inputs(6, n, dtype, with_residual, device)
    q, scale, new_res = rms_norm_quant(x, w, 1e-6, kind, res)
    y, want_res = rms_norm(x, w, 1e-6, res)
    assert q.dtype == Q_DTYPES[kind] and q.shape == (6, n) and scale.shape == (6,)
    assert torch.equal(new_res, want_res)
    for q_want, s_want in (quant_rows(y, kind), QUANT_REF[kind](y)):
        assert torch.equal(_bits(q), _bits(q_want)) and torch.equal(scale, s_want)
    assert scale[1] == torch.tensor(1e-12) and not q[1].float().any()  # zero row


def test_reference_is_the_unfused_torch_path(device):
    x, w, res = _inputs(4, 48, torch.bfloat16, True, device)
    q, scale, new_res = rms_norm_quant_ref(x, w, 1e-5, "int8", res)
    y, want_res = rms_norm(x, w, 1e-5, res)
    q_k, s_k, _ = rms_norm_quant(x, w, 1e-5, "int8", res)
    assert torch.equal(new_res, want_res)
    # rms_norm_ref's rstd may differ from the kernel's in its last bit: rarely one step apart
    assert int((q.int() - q_k.int()).abs().max()) <= 1
    torch.testing.assert_close(scale, s_k, rtol=1e-2, atol=0)


def test_leading_dims_zero_rows_and_bad_input(device):
    x, w, res = _inputs(6, 32, torch.float16, True, device)
    q, scale, new_res = rms_norm_quant(x.view(2, 3, 32), w, 1e-6, "fp8", res.view(2, 3, 32))
    q2, s2, _ = rms_norm_quant(x, w, 1e-6, "fp8", res)
    assert q.shape == (6, 32) and new_res.shape == (2, 3, 32)
    assert torch.equal(_bits(q), _bits(q2)) and torch.equal(scale, s2)
    q, scale, new_res = rms_norm_quant(x[:0], w, 1e-6, "int8", res[:0])
    assert q.shape == (0, 32) and scale.shape == (0,) and new_res.shape == (0, 32)
    with pytest.raises(ValueError, match="kind"):
        rms_norm_quant(x, w, 1e-6, "int4")
    with pytest.raises(ValueError, match="weight"):
        rms_norm_quant(x, w[:16], 1e-6, "fp8")


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["fp8", "int8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 7, 256, 2048])
def test_equals_unfused_kernels_gpu(kind, dtype, rows):
    """Llama-3-8B width: the fused kernel equals rms_norm + quant_rows on the GPU bit for bit
    (same reduction order for the norm, same division and rounding for the quantization)."""
    x, w, res = _inputs(rows, 4096, dtype, True, "cuda")
    for r in (res, None):
        q, scale, new_res = rms_norm_quant(x, w, 1e-5, kind, r)
        y, want_res = rms_norm(x, w, 1e-5, r)
        q_want, s_want = quant_rows(y, kind)
        assert torch.equal(new_res, want_res)
        assert torch.equal(_bits(q), _bits(q_want)) and torch.equal(scale, s_want)
