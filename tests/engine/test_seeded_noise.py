"""The counter-based per-request noise: exact splitmix64, uniform and exponential in law,
independent of the batch, one generator draw per step."""
from __future__ import annotations

import math

import pytest
import torch

from engine import seeded_noise


def test_tensor_hash_equals_pure_python_splitmix64():
    keys = [0, 1, 12345, (1 << 62) - 1]
    bits = seeded_noise._bits(torch.tensor(keys), 0, 50)
    for r, key in enumerate(keys):
        for i in range(50):
            assert int(bits[r, i]) & ((1 << 64) - 1) == seeded_noise.reference_bits(key, i)


def test_uniform_is_in_open_interval_and_uniform_in_law():
    u = seeded_noise.uniform([7, 8, 9, 10], 50_000, "cpu").flatten()
    assert float(u.min()) > 0.0 and float(u.max()) < 1.0
    counts = torch.histc(u.float(), bins=20, min=0.0, max=1.0)
    expected = u.numel() / 20
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 50.0  # 19 degrees of freedom: p ~ 1e-4
    assert abs(float(u.mean()) - 0.5) < 0.005


def test_exponential_moments_and_chunking_consistency(monkeypatch):
    keys = list(range(40))
    e = seeded_noise.exponential(keys, 3000, "cpu")
    assert abs(float(e.mean()) - 1.0) < 0.02 and abs(float(e.var()) - 1.0) < 0.05
    monkeypatch.setattr(seeded_noise, "_MAX_ELEMENTS", 5000)  # forces row chunks
    assert torch.equal(seeded_noise.exponential(keys, 3000, "cpu"), e)


def test_rows_are_independent_of_each_other_and_of_column_offset():
    a = seeded_noise.uniform([3, 4], 100, "cpu")
    assert torch.equal(seeded_noise.uniform([4], 100, "cpu")[0], a[1])
    assert torch.equal(seeded_noise.uniform([3], 60, "cpu", start=40)[0], a[0, 40:])
    assert not torch.equal(a[0], a[1])


def test_draw_key_consumes_the_generator_deterministically():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    keys1 = [seeded_noise.draw_key(g1) for _ in range(4)]
    assert keys1 == [seeded_noise.draw_key(g2) for _ in range(4)]
    assert len(set(keys1)) == 4 and all(0 <= k < (1 << 62) for k in keys1)


@pytest.mark.parametrize("n", [1, 17])
def test_exponential_is_finite_and_positive(n):
    e = seeded_noise.exponential([math.floor(1e15)], n, "cpu")
    assert bool(torch.isfinite(e).all()) and bool((e > 0).all())
