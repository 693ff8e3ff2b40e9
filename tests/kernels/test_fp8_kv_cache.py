"""FP8 (e4m3, per-tensor scale 1.0) KV cache in the Triton kernels: the KV write saturates and
places values like the torch reference; decode and prefill attention read fp8 caches like the
reference (which widens the cache to the query dtype).

Under TRITON_INTERPRET=1 the interpreter's float -> fp8 conversion mis-rounds some values whose
mantissa rounds up into the next binade, so the CPU write test uses values exactly representable
in e4m3 (plus out-of-range ones for saturation); the GPU test compares arbitrary values."""
from __future__ import annotations

import pytest
import torch

from gpu_kernels.paged_attention import paged_attention_decode
from gpu_kernels.paged_attention_ref import paged_attention_ref
from gpu_kernels.prefill_attention import prefill_attention
from gpu_kernels.reshape_and_cache import reshape_and_cache
from gpu_kernels.reshape_and_cache_ref import reshape_and_cache_ref
from tests.kernels._paged import rel_err

F8 = torch.float8_e4m3fn


def _write(k, v, nb, bs, device):
    caches = [torch.zeros(nb, bs, *k.shape[1:], dtype=F8, device=device) for _ in range(4)]
    slots = torch.randperm(nb * bs, device=device)[:k.shape[0]]
    slots[3] = -1  # padding row: skipped
    reshape_and_cache(k, v, caches[0], caches[1], slots)
    reshape_and_cache_ref(k, v, caches[2], caches[3], slots)
    return caches


def test_fp8_write_matches_reference(device):
    k = torch.randn(20, 2, 32, device=device).to(F8).to(torch.float16)  # representable
    v = torch.randn(20, 2, 32, device=device).to(F8).to(torch.float16)
    k[0, 0, :4] = torch.tensor([1000.0, -1000.0, 448.0, -500.0])  # saturate to +-448
    kc, vc, kr, vr = _write(k, v, 8, 16, device)
    assert torch.equal(kc.view(torch.uint8), kr.view(torch.uint8))
    assert torch.equal(vc.view(torch.uint8), vr.view(torch.uint8))
    assert kr.float().abs().max() == 448.0


def test_fp8_decode_and_prefill_read(device):
    nb, bs, kvh, d = 8, 16, 2, 32
    kc = torch.randn(nb, bs, kvh, d, device=device).to(F8)
    vc = torch.randn(nb, bs, kvh, d, device=device).to(F8)
    bt = torch.tensor([[0, 5], [2, 7]], dtype=torch.int32, device=device)
    q = torch.randn(2, 4, d, dtype=torch.float16, device=device)
    seq_lens = torch.tensor([20, 9], dtype=torch.int32, device=device)
    out = paged_attention_decode(q, kc, vc, bt, seq_lens, 0.2, 20)
    ref = paged_attention_ref(q, kc, vc, bt, seq_lens,
                              torch.arange(3, dtype=torch.int32, device=device), 0.2)
    assert rel_err(out, ref) < 5e-3
    qp = torch.randn(29, 4, d, dtype=torch.float16, device=device)
    qsl = torch.tensor([0, 20, 29], dtype=torch.int32, device=device)
    seq_lens = torch.tensor([20, 12], dtype=torch.int32, device=device)
    out = prefill_attention(qp, kc, vc, bt, seq_lens, qsl, 0.2, 20)
    ref = paged_attention_ref(qp, kc, vc, bt, seq_lens, qsl, 0.2)
    assert rel_err(out, ref) < 5e-3


@pytest.mark.gpu
def test_fp8_write_rounds_like_torch_gpu():
    k = torch.randn(300, 8, 128, dtype=torch.bfloat16, device="cuda") * 40
    v = torch.randn(300, 8, 128, dtype=torch.bfloat16, device="cuda")
    kc, vc, kr, vr = _write(k, v, 64, 16, "cuda")
    assert torch.equal(kc.view(torch.uint8), kr.view(torch.uint8))
    assert torch.equal(vc.view(torch.uint8), vr.view(torch.uint8))
