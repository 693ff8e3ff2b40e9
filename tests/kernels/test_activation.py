"""SiLU-and-mul vs torch."""
from __future__ import annotations

import pytest
import torch

from kernels.activation import silu_and_mul, silu_and_mul_ref
from tests.kernels._paged import rel_err


@pytest.mark.parametrize("shape", [(7, 2 * 50), (2, 3, 2 * 64)])
def test_silu_and_mul(shape, device):
    x = torch.randn(shape, device=device)
    out = silu_and_mul(x)
    assert out.shape == (*shape[:-1], shape[-1] // 2)
    assert rel_err(out, silu_and_mul_ref(x)) < 1e-6


def test_silu_and_mul_bf16(device):
    x = torch.randn(5, 2 * 96, dtype=torch.bfloat16, device=device)
    assert rel_err(silu_and_mul(x), silu_and_mul_ref(x)) < 1e-2


@pytest.mark.gpu
def test_silu_and_mul_gpu():
    x = torch.randn(4096, 2 * 14336, dtype=torch.bfloat16, device="cuda")
    assert rel_err(silu_and_mul(x), silu_and_mul_ref(x)) < 1e-2
