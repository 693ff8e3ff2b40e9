"""Fused sampling kernel: greedy rows exact, sampled rows follow softmax(x / T)."""
from __future__ import annotations

import math

import pytest
import torch

from gpu_kernels.sampling import sample_tokens, sample_tokens_ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,vocab", [(1, 5000), (6, 3000)])
def test_greedy_rows_equal_argmax_with_raw_logprobs(rows, vocab, dtype, device):
    logits = (torch.randn(rows, vocab, device=device) * 3).to(dtype)
    # Ties across vocabulary splits and chunks: the first index must win, as in torch.argmax.
    logits[0, 4000 % vocab] = 50.0
    logits[0, 123] = 50.0
    tokens, logprobs = sample_tokens(logits, torch.zeros(rows, device=device), seed=1)
    assert torch.equal(tokens, logits.float().argmax(dim=-1))
    assert tokens[0].item() == 123
    want = torch.log_softmax(logits.float(), dim=-1).gather(1, tokens[:, None]).squeeze(1)
    assert torch.allclose(logprobs, want, atol=1e-5, rtol=0)


def test_sampled_rows_follow_the_tempered_distribution(device):
    rows, vocab, temp = 500, 1100, 0.7  # the interpreter runs one program per row: keep it small
    base = torch.full((vocab,), -30.0)
    hot = [5, 600, 1030, 1099]  # spread over both 1024-column chunks
    base[hot] = torch.tensor([1.0, 0.5, 0.0, -0.5])
    logits = base.repeat(rows, 1).to(device)
    tokens, logprobs = sample_tokens(logits, torch.full((rows,), temp, device=device), seed=7)
    probs = torch.softmax(base / temp, dim=0)
    assert set(tokens.tolist()) <= set(hot)
    for tok in hot:
        p = probs[tok].item()
        freq = (tokens == tok).float().mean().item()
        assert abs(freq - p) < 4.5 * math.sqrt(p * (1 - p) / rows) + 1e-3, (tok, freq, p)
    raw = torch.log_softmax(base, dim=0).to(device)
    assert torch.allclose(logprobs, raw[tokens], atol=1e-5, rtol=0)


def test_seed_reproduces_and_mixed_rows(device):
    logits = torch.randn(8, 3000, device=device)
    temps = torch.tensor([0, 1, 1, 0, 2, 1, 0, 1], dtype=torch.float32, device=device)
    a, _ = sample_tokens(logits, temps, seed=3)
    b, _ = sample_tokens(logits, temps, seed=3)
    assert torch.equal(a, b)
    greedy = temps == 0
    assert torch.equal(a[greedy], logits.argmax(dim=-1)[greedy])
    draws = {tuple(sample_tokens(logits, temps, seed=s)[0][~greedy].tolist()) for s in range(4)}
    assert len(draws) > 1


def test_reference_agrees_on_greedy_rows(device):
    logits = torch.randn(4, 700, device=device)
    temps = torch.zeros(4, device=device)
    t1, l1 = sample_tokens(logits, temps, seed=0)
    t2, l2 = sample_tokens_ref(logits, temps)
    assert torch.equal(t1, t2) and torch.allclose(l1, l2, atol=1e-5)


def test_bad_shapes_are_refused(device):
    with pytest.raises(ValueError, match="temperature"):
        sample_tokens(torch.randn(2, 10, device=device), torch.zeros(3, device=device), seed=0)
    with pytest.raises(ValueError, match="logits"):
        sample_tokens(torch.randn(10, device=device), torch.zeros(10, device=device), seed=0)


@pytest.mark.gpu
def test_sampling_gpu_real_vocab():
    logits = torch.randn(512, 128256, device="cuda", dtype=torch.bfloat16) * 4
    temps = torch.zeros(512, device="cuda")
    tokens, logprobs = sample_tokens(logits, temps, seed=0)
    assert torch.equal(tokens, logits.float().argmax(dim=-1))
    want = torch.log_softmax(logits.float(), dim=-1).gather(1, tokens[:, None]).squeeze(1)
    assert torch.allclose(logprobs, want, atol=1e-4, rtol=0)


@pytest.mark.gpu
def test_seeded_noise_bits_equal_on_cpu_and_cuda():
    """Seeded rows' noise (engine/seeded_noise.py) is the same integer stream on both devices."""
    from engine import seeded_noise
    keys = [1, 2 ** 40 + 3, (1 << 62) - 5]
    cpu = seeded_noise._bits(torch.tensor(keys), 0, 4096)
    gpu = seeded_noise._bits(torch.tensor(keys, device="cuda"), 0, 4096)
    assert torch.equal(cpu, gpu.cpu())
    e_cpu = seeded_noise.exponential(keys, 4096, "cpu")
    e_gpu = seeded_noise.exponential(keys, 4096, "cuda").cpu()
    assert torch.allclose(e_cpu, e_gpu, rtol=1e-6, atol=0)
