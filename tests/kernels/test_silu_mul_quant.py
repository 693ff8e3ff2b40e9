"""Fused SiLU-and-mul + per-token FP8 / INT8 quantization, bit for bit against the unfused path:
the SiLU-and-mul kernel, then the quantization kernel or its torch reference."""
from __future__ import annotations

import pytest
import torch

from gpu_kernels.activation import silu_and_mul
from gpu_kernels.silu_mul_quant import silu_mul_quant, silu_mul_quant_ref
from gpu_kernels.row_quant import Q_DTYPES, quant_rows
from gpu_kernels.quant_fp8_rows import quant_fp8_rows_ref
from gpu_kernels.quant_int8_rows import quant_int8_rows_ref

QUANT_REF = {"fp8": quant_fp8_rows_ref, "int8": quant_int8_rows_ref}


def _bits(q: torch.Tensor) -> torch.Tensor:
    return q.view(torch.uint8) if q.dtype == torch.float8_e4m3fn else q


def _input(rows: int, d: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    x = torch.randn(rows, 2 * d) * torch.logspace(-2, 1, max(rows, 1))[:rows, None]
    if rows > 1:
        x[1] = 0  # a row whose output is all zero
    return x.to(dtype).to(device)


@pytest.mark.parametrize("kind", ["fp8", "int8"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [48, 100, 2500])  # one block, ragged, several blocks (2048 wide)
def test_equals_unfused(kind, dtype, d, device):
    x = _input(5, d, dtype, device)
    q, scale = silu_mul_quant(x, kind)
    y = silu_and_mul(x)
    assert q.dtype == Q_DTYPES[kind] and q.shape == (5, d) and scale.shape == (5,)
    for q_want, s_want in (quant_rows(y, kind), QUANT_REF[kind](y)):
        assert torch.equal(_bits(q), _bits(q_want)) and torch.equal(scale, s_want)
    assert scale[1] == torch.tensor(1e-12) and not q[1].float().any()


def test_reference_and_leading_dims(device):
    x = _input(6, 40, torch.bfloat16, device)
    q, scale = silu_mul_quant(x.view(2, 3, 80), "fp8")
    q_ref, s_ref = silu_mul_quant_ref(x.view(2, 3, 80), "fp8")
    assert q.shape == (6, 40)
    # the kernel's exp may differ from torch's in the last bit: rarely one e4m3 step apart
    assert float((q.float() != q_ref.float()).float().mean()) < 0.05
    torch.testing.assert_close(scale, s_ref, rtol=1e-2, atol=0)


def test_zero_rows_and_bad_input(device):
    q, scale = silu_mul_quant(torch.zeros(0, 64, device=device), "int8")
    assert q.shape == (0, 32) and scale.shape == (0,)
    with pytest.raises(ValueError, match="even"):
        silu_mul_quant(torch.zeros(2, 63, device=device), "fp8")
    with pytest.raises(ValueError, match="kind"):
        silu_mul_quant(torch.zeros(2, 64, device=device), "fp4")


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["fp8", "int8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 7, 256, 2048])
def test_equals_unfused_kernels_gpu(kind, dtype, rows):
    """Llama-3-8B's intermediate width: the fused kernel equals silu_and_mul + quant_rows on the
    GPU bit for bit."""
    x = _input(rows, 14336, dtype, "cuda")
    q, scale = silu_mul_quant(x, kind)
    q_want, s_want = quant_rows(silu_and_mul(x), kind)
    assert torch.equal(_bits(q), _bits(q_want)) and torch.equal(scale, s_want)
