"""Mixed-precision (W4A16 / W8A16) GEMM vs its torch reference and vs the dense weight it encodes:
ragged M, odd K, group sizes, split-K, and act-order permutations from the loader's repack."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from engine.quantization.base import pack_int32
from engine.quantization.weight_only import WeightOnlyParams, to_canonical
from gpu_kernels.w4a16_gemm import w4a16_gemm, w4a16_gemm_ref
from tests.kernels._paged import rel_err


def random_quantized(k: int, n: int, bits: int, group: int, device: str):
    """(q [K, N], zeros [G, N], scales [G, N]) with K padded for packing by the caller."""
    g = -(-k // group)
    q = torch.randint(0, 1 << bits, (k, n), dtype=torch.int32, device=device)
    zeros = torch.randint(0, 1 << bits, (g, n), device=device).float()
    scales = torch.rand(g, n, device=device) * 0.02 + 0.001
    return q, zeros, scales


def dense(q, zeros, scales, group):
    g = torch.arange(q.shape[0], device=q.device) // group
    return (q.float() - zeros[g]) * scales[g]


@pytest.mark.parametrize("m,k,n,bits,group,split_k", [
    (1, 128, 64, 4, 32, 0),     # decode shape (the GEMV): split-K chosen by the wrapper
    (2, 100, 64, 8, 32, 0),     # 8-bit GEMV, odd K
    (5, 100, 72, 4, 64, 1),     # ragged M, odd K (padded to the packing), partial N tile
    (33, 96, 64, 8, 32, 3),     # 8-bit, split-K 3 with a K tail per split
    (17, 64, 128, 4, 64, 1),    # one group over all of K (group_size -1)
])
def test_gemm_matches_reference_and_dense(m, k, n, bits, group, split_k, device):
    q, zeros, scales = random_quantized(k, n, bits, group, device)
    pad = (-k) % (32 // bits)
    qw = pack_int32(torch.cat([q, q.new_zeros(pad, n)]) if pad else q, bits, dim=0)
    x = torch.randn(m, k, device=device)
    out = w4a16_gemm(x, qw, scales, zeros, bits, group, split_k=split_k)
    ref = w4a16_gemm_ref(x, qw, scales, zeros, bits, group)
    assert out.shape == (m, n)
    assert rel_err(out, ref) < 1e-5
    assert rel_err(ref, x @ dense(q, zeros, scales, group)) < 1e-5


@pytest.mark.parametrize("m,k,n,bits,group,cfg", [
    # one group per K step (scale applied to the partial product), split-K with a K tail
    (1, 200, 48, 4, 64, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=64, SPLIT_K=2)),
    (3, 256, 96, 4, 128, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, SPLIT_K=1)),
    # one dot per value slot (no reshape), 4- and 8-bit, with a K tail and split-K
    (9, 300, 48, 4, 128, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=128, SPLIT_K=2, PER_VALUE=True)),
    (18, 192, 64, 8, 64, dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=64, SPLIT_K=1, PER_VALUE=True)),
    (20, 128, 64, 8, 32, dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, SPLIT_K=3)),
    # K steps spanning several groups, and a group size no step size divides (per-row gather)
    (2, 192, 40, 4, 32, dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, SPLIT_K=1)),
    (7, 144, 64, 4, 48, dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=32, SPLIT_K=2)),
])
def test_gemm_tile_paths(m, k, n, bits, group, cfg, device):
    q, zeros, scales = random_quantized(k, n, bits, group, device)
    pad = (-k) % (32 // bits)
    qw = pack_int32(torch.cat([q, q.new_zeros(pad, n)]) if pad else q, bits, dim=0)
    x = torch.randn(m, k, device=device)
    out = w4a16_gemm(x, qw, scales, zeros, bits, group, config=cfg)
    assert rel_err(out, x @ dense(q, zeros, scales, group)) < 1e-5
    if m <= 4:  # the same product through the GEMV kernel, its heuristic and a split-K config
        ref = x @ dense(q, zeros, scales, group)
        assert rel_err(w4a16_gemm(x, qw, scales, zeros, bits, group, gemv=True), ref) < 1e-5
        gcfg = dict(BLOCK_N=32, BLOCK_K=cfg["BLOCK_K"], SPLIT_K=cfg["SPLIT_K"] + 1)
        out = w4a16_gemm(x, qw, scales, zeros, bits, group, config=gcfg, gemv=True)
        assert rel_err(out, ref) < 1e-5
    with pytest.raises(ValueError, match="BLOCK_K"):
        w4a16_gemm(x, qw, scales, zeros, bits, group, config={**cfg, "BLOCK_K": 12})


def test_split_k_workspace_left_zeroed(device):
    """Split-K calls share one workspace: each leaves it zeroed, so repeated calls (and calls of
    other shapes in between) give the same result."""
    from gpu_kernels import splitk as mod
    q, zeros, scales = random_quantized(256, 80, 4, 64, device)
    qw = pack_int32(q, 4, dim=0)
    x = torch.randn(2, 256, device=device)
    cfg = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, SPLIT_K=4)
    first = w4a16_gemm(x, qw, scales, zeros, 4, 64, config=cfg)
    other = w4a16_gemm(x[:1], qw, scales, zeros, 4, 64, config={**cfg, "SPLIT_K": 2})
    gemv = w4a16_gemm(x, qw, scales, zeros, 4, 64, config=dict(BLOCK_N=16, BLOCK_K=64, SPLIT_K=3),
                      gemv=True)
    again = w4a16_gemm(x, qw, scales, zeros, 4, 64, config=cfg)
    assert rel_err(gemv, first) < 1e-5
    ws, cnt = mod._WORKSPACES[x.device]
    assert int((ws != 0).sum()) == 0 and int((cnt != 0).sum()) == 0
    assert rel_err(first, again) < 1e-6 and rel_err(other, first[:1]) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16])
def test_gemm_half(dtype, device):
    q, zeros, scales = random_quantized(128, 64, 4, 32, device)
    qw = pack_int32(q, 4, dim=0)
    x = torch.randn(3, 128, device=device, dtype=dtype)
    out = w4a16_gemm(x, qw, scales.to(dtype), zeros.to(dtype), 4, 32)
    ref = w4a16_gemm_ref(x, qw, scales.to(dtype), zeros.to(dtype), 4, 32)
    assert out.dtype == dtype and rel_err(out, ref) < 2e-2


@pytest.mark.parametrize("bits", [4, 8])
def test_act_order_repack(bits, device):
    """A GPTQ desc_act layer (g_idx a permutation of the groups) repacked at load: the kernel on
    x[:, perm] equals x @ W of the original row order."""
    k, n, group = 96, 64, 32
    q, zeros, scales = random_quantized(k, n, bits, group, device)
    g_idx = (torch.randperm(k, device=device) // group).to(torch.int32)
    w = (q.float() - zeros[g_idx.long()]) * scales[g_idx.long()]
    layer = SimpleNamespace(prefix="test", register_buffer=None)
    bufs: dict = {}
    layer.register_buffer = lambda name, t, persistent=False: bufs.__setitem__(name, t)
    to_canonical(layer, q, zeros, scales, WeightOnlyParams(bits, group), g_idx)
    assert bufs["w_perm"] is not None
    x = torch.randn(7, k, device=device)
    out = w4a16_gemm(x.index_select(1, bufs["w_perm"]), bufs["w_qweight"], bufs["w_scales"],
                     bufs["w_zeros"], bits, group)
    assert rel_err(out, x @ w) < 1e-5


def test_bad_shapes(device):
    qw = torch.zeros(16, 64, dtype=torch.int32, device=device)
    s = torch.ones(4, 64, device=device)
    with pytest.raises(ValueError, match="qweight"):
        w4a16_gemm(torch.randn(2, 100, device=device), qw, s, s, 4, 32)
    with pytest.raises(ValueError, match="scales"):
        w4a16_gemm(torch.randn(2, 128, device=device), qw, s[:2], s[:2], 4, 32)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 64, 256])
def test_gemm_gpu_llama_shapes(m):
    k, n, group = 4096, 4096, 128
    q, zeros, scales = random_quantized(k, n, 4, group, "cuda")
    qw = pack_int32(q, 4, dim=0)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    out = w4a16_gemm(x, qw, scales.bfloat16(), zeros.bfloat16(), 4, group)
    ref = w4a16_gemm_ref(x, qw, scales.bfloat16(), zeros.bfloat16(), 4, group)
    assert rel_err(out, ref) < 2e-2
