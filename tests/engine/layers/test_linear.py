"""Linear layers: per-parameter weight loaders place fused shards and (for tensor parallelism)
each rank's slice; the rank outputs recombine to the full layer's output."""
from __future__ import annotations

import pytest
import torch

from engine.layers.linear import (ColumnParallelLinear, MergedColumnParallelLinear,
                                  QKVParallelLinear, ReplicatedLinear, RowParallelLinear)


def _load(layer, name, tensor, shard=None):
    param = getattr(layer, name)
    return param.weight_loader(param, tensor, shard)


def test_replicated_matches_nn_linear():
    ref = torch.nn.Linear(12, 7)
    layer = ReplicatedLinear(12, 7, bias=True)
    _load(layer, "weight", ref.weight.data)
    _load(layer, "bias", ref.bias.data)
    x = torch.randn(3, 12)
    assert torch.equal(layer(x), ref(x))


def test_qkv_and_merged_shards():
    hidden, hd, heads, kv = 16, 4, 4, 2
    q, k, v = torch.randn(16, hidden), torch.randn(8, hidden), torch.randn(8, hidden)
    layer = QKVParallelLinear(hidden, hd, heads, kv, bias=False)
    for sid, t in zip("qkv", (q, k, v)):
        assert _load(layer, "weight", t, sid) == t.numel()
    assert torch.equal(layer.weight.data, torch.cat([q, k, v]))
    gate, up = torch.randn(10, hidden), torch.randn(10, hidden)
    merged = MergedColumnParallelLinear(hidden, [10, 10], bias=False)
    _load(merged, "weight", up, 1)
    _load(merged, "weight", gate, 0)
    assert torch.equal(merged.weight.data, torch.cat([gate, up]))
    with pytest.raises(ValueError, match="expected"):
        _load(layer, "weight", torch.randn(9, hidden), "k")
    with pytest.raises(ValueError, match="shard"):
        _load(layer, "weight", k, "x")


@pytest.mark.parametrize("tp", [2, 4])
def test_tensor_parallel_slices_recombine(tp):
    """Column ranks' outputs concatenate and row ranks' partial sums add up to the full layer."""
    w1, b1 = torch.randn(16, 12), torch.randn(16)
    w2, b2 = torch.randn(12, 16), torch.randn(12)
    x = torch.randn(5, 12)
    full = (x @ w1.t() + b1) @ w2.t() + b2
    cols, partial = [], torch.zeros(5, 12)
    for rank in range(tp):
        col = ColumnParallelLinear(12, 16, True, tp_size=tp, tp_rank=rank)
        _load(col, "weight", w1)
        _load(col, "bias", b1)
        row = RowParallelLinear(16, 12, True, tp_size=tp, tp_rank=rank)
        _load(row, "weight", w2)
        _load(row, "bias", b2)
        h = col(x)
        cols.append(h)
        partial += row(h)
    assert torch.allclose(torch.cat(cols, -1), x @ w1.t() + b1, atol=1e-5)
    assert torch.allclose(partial, full, atol=1e-4)


def test_qkv_tensor_parallel_heads():
    hidden, hd, heads, kv, tp = 16, 4, 4, 2, 2
    q, k, v = torch.randn(16, hidden), torch.randn(8, hidden), torch.randn(8, hidden)
    for rank in range(tp):
        layer = QKVParallelLinear(hidden, hd, heads, kv, bias=False, tp_size=tp, tp_rank=rank)
        for sid, t in zip("qkv", (q, k, v)):
            _load(layer, "weight", t, sid)
        expect = torch.cat([q[rank * 8:(rank + 1) * 8], k[rank * 4:(rank + 1) * 4],
                            v[rank * 4:(rank + 1) * 4]])
        assert torch.equal(layer.weight.data, expect)
