"""Fused MoE kernel vs its pure-torch reference (Triton interpreter on CPU)."""
from __future__ import annotations

import pytest
import torch

from gpu_kernels.fused_moe import fused_moe, moe_align_block_size
from gpu_kernels.fused_moe_ref import fused_moe_ref, select_experts
from tests.kernels._paged import rel_err

HIDDEN, INTER = 48, 40  # not powers of two: exercises the column and K masks


def _weights(e: int, dtype=torch.float32, device="cpu"):
    w13 = torch.randn(e, 2 * INTER, HIDDEN, dtype=dtype, device=device) * 0.2
    w2 = torch.randn(e, HIDDEN, INTER, dtype=dtype, device=device) * 0.2
    return w13, w2


@pytest.mark.parametrize("tokens,experts,top_k", [(1, 4, 1), (5, 8, 2), (19, 4, 2), (3, 16, 8),
                                                  (37, 8, 8)])
def test_fused_moe_matches_reference(tokens, experts, top_k, device):
    x = torch.randn(tokens, HIDDEN, device=device)
    w13, w2 = _weights(experts, device=device)
    weights, ids = select_experts(torch.randn(tokens, experts, device=device), top_k, True)
    got = fused_moe(x, w13, w2, weights, ids)
    assert got.shape == x.shape
    assert rel_err(got, fused_moe_ref(x, w13, w2, weights, ids)) < 1e-5


def test_experts_without_tokens_and_ragged_counts(device):
    """Expert 0 gets 11 pairs, expert 7 ten, expert 3 one, experts 1, 2, 4-6 none; 16-row tiles."""
    tokens = 11
    ids = torch.zeros(tokens, 2, dtype=torch.long, device=device)
    ids[:, 1] = 7
    ids[0, 1] = 3
    weights = torch.rand(tokens, 2, device=device)
    x = torch.randn(tokens, HIDDEN, device=device)
    w13, w2 = _weights(8, device=device)
    got = fused_moe(x, w13, w2, weights, ids, block_m=16)
    assert rel_err(got, fused_moe_ref(x, w13, w2, weights, ids)) < 1e-5


def test_align_groups_pairs_by_expert_in_aligned_tiles(device):
    ids = torch.tensor([[2, 0], [2, 5], [5, 2], [0, 2]], device=device)
    sorted_ids, expert_ids, num_padded = moe_align_block_size(ids, 8, 4)
    flat = ids.reshape(-1).tolist()
    used = int(num_padded.item())
    assert used == 4 * 3  # experts 0 (2 pairs), 2 (4 pairs), 5 (2 pairs): one 4-row tile each
    assert expert_ids[:3].tolist() == [0, 2, 5] and (expert_ids[3:] == -1).all()
    rows = sorted_ids.tolist()
    for tile, expert in enumerate(expert_ids[:3].tolist()):
        pairs = [p for p in rows[tile * 4:(tile + 1) * 4] if p < len(flat)]
        assert pairs == sorted(pairs) and all(flat[p] == expert for p in pairs)
    assert sorted(p for p in rows[:used] if p < len(flat)) == list(range(len(flat)))
    assert all(p == len(flat) for p in rows[used:])


def test_fused_moe_bf16(device):
    x = torch.randn(9, HIDDEN, dtype=torch.bfloat16, device=device)
    w13, w2 = _weights(4, torch.bfloat16, device)
    weights, ids = select_experts(torch.randn(9, 4, device=device), 2, False)
    got = fused_moe(x, w13, w2, weights.to(torch.bfloat16), ids)
    want = fused_moe_ref(x.float(), w13.float(), w2.float(), weights, ids)
    assert rel_err(got.float(), want) < 2e-2


def test_fused_moe_rejects_bad_shapes(device):
    x = torch.randn(3, HIDDEN, device=device)
    w13, w2 = _weights(4, device=device)
    weights, ids = select_experts(torch.randn(3, 4, device=device), 2, True)
    with pytest.raises(ValueError, match="do not fit"):
        fused_moe(x, w13[:, :, :-1], w2, weights, ids)
    with pytest.raises(ValueError, match=r"must both be \[3, K\]"):
        fused_moe(x, w13, w2, weights[:, :1], ids)


@pytest.mark.gpu
def test_fused_moe_gpu_mixtral_shape():
    x = torch.randn(512, 4096, dtype=torch.bfloat16, device="cuda")
    w13 = torch.randn(8, 2 * 14336, 4096, dtype=torch.bfloat16, device="cuda") * 0.02
    w2 = torch.randn(8, 4096, 14336, dtype=torch.bfloat16, device="cuda") * 0.02
    weights, ids = select_experts(torch.randn(512, 8, device="cuda"), 2, True)
    got = fused_moe(x, w13, w2, weights.to(torch.bfloat16), ids)
    want = fused_moe_ref(x, w13, w2, weights, ids)
    assert rel_err(got.float(), want.float()) < 2e-2
