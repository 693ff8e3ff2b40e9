"""Rotary embedding (neox and GPT-J, full and partial) vs the torch reference."""
from __future__ import annotations

import pytest
import torch

from gpu_kernels.rotary import rotary_embedding, rotary_embedding_ref
from tests.kernels._paged import rel_err


def _cos_sin(max_pos, rot_dim, device, dtype=torch.float32):
    inv = 1.0 / (10000 ** (torch.arange(0, rot_dim, 2, dtype=torch.float32) / rot_dim))
    freqs = torch.arange(max_pos, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([freqs.cos(), freqs.sin()], -1).to(dtype).to(device)


@pytest.mark.parametrize("is_neox", [True, False])
@pytest.mark.parametrize("head_size,rot_dim", [(32, 32), (40, 16)])
def test_rotary(is_neox, head_size, rot_dim, device):
    t, h, kvh = 9, 4, 2
    cache = _cos_sin(64, rot_dim, device)
    positions = torch.randint(0, 64, (t,), device=device)
    q = torch.randn(t, h * head_size, device=device)
    k = torch.randn(t, kvh, head_size, device=device)
    q_ref, k_ref = q.clone(), k.clone()
    rotary_embedding(positions, q, k, head_size, cache, is_neox)
    rotary_embedding_ref(positions, q_ref, k_ref, head_size, cache, is_neox)
    assert rel_err(q, q_ref) < 1e-6 and rel_err(k, k_ref) < 1e-6


def test_rotary_strided_views_of_fused_qkv(device):
    t, h, kvh, d = 5, 2, 1, 32
    qkv = torch.randn(t, (h + 2 * kvh) * d, dtype=torch.bfloat16, device=device)
    ref = qkv.clone()
    cache = _cos_sin(16, d, device)
    positions = torch.arange(t, device=device) + 3
    q, k = qkv[:, :h * d], qkv[:, h * d:(h + kvh) * d]
    rotary_embedding(positions, q, k, d, cache, True)
    rotary_embedding_ref(positions, ref[:, :h * d], ref[:, h * d:(h + kvh) * d], d, cache, True)
    assert torch.equal(qkv[:, (h + kvh) * d:], ref[:, (h + kvh) * d:])  # V untouched
    # Each product and sum rounded to bf16 like the model code: bit-equal.
    assert torch.equal(qkv[:, :(h + kvh) * d], ref[:, :(h + kvh) * d])


@pytest.mark.gpu
@pytest.mark.parametrize("is_neox", [True, False])
def test_rotary_gpu(is_neox):
    t, h, kvh, d = 4096, 32, 8, 128
    cache = _cos_sin(8192, d, "cuda")
    positions = torch.randint(0, 8192, (t,), device="cuda")
    q = torch.randn(t, h * d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(t, kvh * d, dtype=torch.bfloat16, device="cuda")
    q_ref, k_ref = q.clone(), k.clone()
    rotary_embedding(positions, q, k, d, cache, is_neox)
    rotary_embedding_ref(positions, q_ref, k_ref, d, cache, is_neox)
    # Same rounding points as the model code in bf16. The compiler may form a difference of two
    # bf16 products in one rounding where torch rounds to fp32 first: rare last-bit flips.
    for got, want in ((q, q_ref), (k, k_ref)):
        same = (got == want).float().mean().item()
        assert same > 0.999, f"only {same:.5f} of elements bit-equal"
        assert rel_err(got, want) < 1e-2


@pytest.mark.gpu
def test_rotary_equals_the_unfused_layer_gpu():
    """The fused kernel against engine.layers.rotary.apply_rotary (HF's arithmetic) in bf16."""
    from engine.layers.rotary import apply_rotary
    t, h, d = 1024, 8, 128
    cache = _cos_sin(4096, d, "cuda")
    positions = torch.randint(0, 4096, (t,), device="cuda")
    q = torch.randn(t, h, d, dtype=torch.bfloat16, device="cuda")
    cs = cache[positions]
    want = apply_rotary(q, cs[:, :d // 2], cs[:, d // 2:], True)
    rotary_embedding(positions, q, None, d, cache, True)
    same = (q == want).float().mean().item()
    assert same > 0.999, f"only {same:.5f} of elements bit-equal"
