"""copy_blocks (all layers, one launch) and swap_blocks (GPU <-> pinned CPU, side stream)."""
from __future__ import annotations

import pytest
import torch

from gpu_kernels.copy_blocks import copy_blocks, copy_blocks_ref, swap_blocks, swap_blocks_ref


def _caches(layers, shape, dtype, device):
    return [torch.randn(shape, dtype=dtype, device=device) for _ in range(layers)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_copy_blocks_all_layers(dtype, device):
    shape = (9, 8, 2, 40)  # block numel 640: not a multiple of the tile
    ks, vs = _caches(3, shape, dtype, device), _caches(3, shape, dtype, device)
    ks_ref, vs_ref = [k.clone() for k in ks], [v.clone() for v in vs]
    mapping = torch.tensor([[4, 0], [7, 2], [4, 8]], dtype=torch.int64, device=device)
    copy_blocks(ks, vs, mapping)
    copy_blocks_ref(ks_ref, vs_ref, mapping)
    for a, b in zip(ks + vs, ks_ref + vs_ref):
        assert torch.equal(a, b)


def test_copy_blocks_empty_mapping(device):
    ks = _caches(1, (2, 4, 1, 8), torch.float32, device)
    before = ks[0].clone()
    copy_blocks(ks, ks, torch.empty(0, 2, dtype=torch.int64, device=device))
    assert torch.equal(ks[0], before)


def test_swap_blocks_cpu_fallback():
    src = torch.randn(5, 4, 2, 8)
    dst = torch.randn(6, 4, 2, 8)
    dst_ref = dst.clone()
    mapping = torch.tensor([[1, 5], [3, 0]])
    assert swap_blocks(src, dst, mapping) is None
    swap_blocks_ref(src, dst_ref, mapping)
    assert torch.equal(dst, dst_ref)


@pytest.mark.gpu
def test_copy_blocks_gpu():
    shape = (4096, 16, 8, 128)
    ks = _caches(4, shape, torch.bfloat16, "cuda")
    vs = _caches(4, shape, torch.bfloat16, "cuda")
    ks_ref, vs_ref = [k.clone() for k in ks], [v.clone() for v in vs]
    perm = torch.randperm(4096, device="cuda")
    mapping = torch.stack([perm[:100], perm[100:200]], 1)
    copy_blocks(ks, vs, mapping)
    copy_blocks_ref(ks_ref, vs_ref, mapping)
    for a, b in zip(ks + vs, ks_ref + vs_ref):
        assert torch.equal(a, b)


@pytest.mark.gpu
def test_swap_blocks_gpu_roundtrip():
    gpu = torch.randn(512, 16, 8, 128, dtype=torch.bfloat16, device="cuda")
    cpu = torch.randn(256, 16, 8, 128, dtype=torch.bfloat16).pin_memory()
    out_map = torch.tensor([[10, 3], [500, 0], [7, 255]])
    ev = swap_blocks(gpu, cpu, out_map)
    ev.synchronize()
    for s, d in out_map.tolist():
        assert torch.equal(cpu[d], gpu[s].cpu())
    in_map = torch.tensor([[3, 1], [255, 2]])
    ev = swap_blocks(cpu, gpu, in_map)
    torch.cuda.current_stream().wait_event(ev)
    assert torch.equal(gpu[1].cpu(), cpu[3]) and torch.equal(gpu[2].cpu(), cpu[255])
