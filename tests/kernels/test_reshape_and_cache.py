"""reshape_and_cache vs the torch reference: scattered slots, padding, strided K/V views."""
from __future__ import annotations

import pytest
import torch

from gpu_kernels.reshape_and_cache import reshape_and_cache, reshape_and_cache_ref


def _run(num_tokens, kv_heads, head_dim, block_size, dtype, device, pad=0):
    num_blocks = (num_tokens + block_size - 1) // block_size + 3
    # K and V as views into one fused projection output: token stride > KVH * D
    fused = torch.randn(num_tokens + pad, 3 * kv_heads * head_dim, dtype=dtype, device=device)
    key = fused[:, kv_heads * head_dim:2 * kv_heads * head_dim].view(-1, kv_heads, head_dim)
    value = fused[:, 2 * kv_heads * head_dim:].view(-1, kv_heads, head_dim)
    slots = torch.randperm(num_blocks * block_size, device=device)[:num_tokens]
    slots = torch.cat([slots, torch.full((pad,), -1, device=device, dtype=slots.dtype)])
    shape = (num_blocks, block_size, kv_heads, head_dim)
    kc = torch.randn(shape, dtype=dtype, device=device)
    vc = torch.randn(shape, dtype=dtype, device=device)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    reshape_and_cache(key, value, kc, vc, slots)
    reshape_and_cache_ref(key, value, kc_ref, vc_ref, slots)
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)


@pytest.mark.parametrize("kv_heads,head_dim,block_size", [(2, 32, 8), (3, 80, 16), (1, 64, 32)])
def test_reshape_and_cache(kv_heads, head_dim, block_size, device):
    _run(37, kv_heads, head_dim, block_size, torch.float32, device, pad=3)


def test_reshape_and_cache_bf16_and_empty(device):
    _run(5, 2, 32, 8, torch.bfloat16, device)
    _run(0, 2, 32, 8, torch.float32, device)


def test_reshape_and_cache_rejects_shape_mismatch(device):
    k = torch.randn(4, 2, 32, device=device)
    kc = torch.randn(3, 8, 2, 16, device=device)
    with pytest.raises(ValueError):
        reshape_and_cache(k, k, kc, kc.clone(), torch.arange(4, device=device))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reshape_and_cache_gpu(dtype):
    _run(8192, 8, 128, 16, dtype, "cuda", pad=64)
