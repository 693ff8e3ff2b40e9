"""Fused RMSNorm (+ residual) vs the unfused torch reference."""
from __future__ import annotations

import pytest
import torch

from gpu_kernels.rms_norm import rms_norm, rms_norm_ref
from tests.kernels._paged import rel_err


@pytest.mark.parametrize("hidden", [64, 100])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(hidden, with_residual, device):
    x = torch.randn(7, hidden, device=device)
    w = torch.randn(hidden, device=device)
    res = torch.randn(7, hidden, device=device) if with_residual else None
    out, new_res = rms_norm(x, w, 1e-6, res)
    ref, ref_res = rms_norm_ref(x, w, 1e-6, res)
    assert rel_err(out, ref) < 1e-5
    assert torch.equal(new_res, ref_res)


def test_rms_norm_bf16_3d(device):
    x = torch.randn(2, 3, 48, dtype=torch.bfloat16, device=device)
    w = torch.randn(48, dtype=torch.bfloat16, device=device)
    res = torch.randn_like(x)
    out, new_res = rms_norm(x, w, 1e-5, res)
    ref, ref_res = rms_norm_ref(x, w, 1e-5, res)
    assert out.shape == x.shape and rel_err(out, ref) < 1e-2
    # Triton's CPU interpreter rounds float32 -> bf16 by truncation, the GPU to nearest: the
    # residual sum is compared bit-exactly only in the GPU test.
    assert rel_err(new_res, ref_res) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rms_norm_gpu(dtype):
    x = torch.randn(4096, 4096, dtype=dtype, device="cuda")
    w = torch.randn(4096, dtype=dtype, device="cuda")
    res = torch.randn_like(x)
    out, new_res = rms_norm(x, w, 1e-5, res)
    ref, ref_res = rms_norm_ref(x, w, 1e-5, res)
    assert rel_err(out, ref) < 1e-2 and torch.equal(new_res, ref_res)
