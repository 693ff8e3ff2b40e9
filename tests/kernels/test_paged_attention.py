"""Decode paged attention vs the torch reference: ragged contexts, GQA/MQA, splits, windows."""
from __future__ import annotations

import pytest
import torch

from gpu_kernels.paged_attention import paged_attention_decode, paged_attention_decode_ref
from tests.kernels._paged import make_paged_case, poisoned_like, rel_err

F32_TOL = 1e-4
LOW_TOL = 2e-2


def _run(seq_lens, heads, kv_heads, head_dim, block_size, dtype, device, window=None,
         num_splits=None, pad_rows=0, softcap=None):
    case = make_paged_case(seq_lens, [1] * len(seq_lens), heads, kv_heads, head_dim,
                           block_size, dtype, device)
    query = case.query
    if pad_rows:  # graph padding: rows past num_seqs must come back zeroed
        query = torch.cat([query, torch.randn(pad_rows, heads, head_dim, dtype=dtype,
                                              device=device)])
    scale = head_dim ** -0.5
    out = poisoned_like(query)
    paged_attention_decode(query, case.key_cache, case.value_cache, case.block_tables,
                           case.seq_lens, scale, max(seq_lens), sliding_window=window, out=out,
                           num_splits=num_splits, softcap=softcap)
    ref = paged_attention_decode_ref(case.query, case.key_cache, case.value_cache,
                                     case.block_tables, case.seq_lens, scale, window,
                                     softcap=softcap)
    if softcap:  # the cap must matter for the comparison to mean anything
        plain = paged_attention_decode_ref(case.query, case.key_cache, case.value_cache,
                                           case.block_tables, case.seq_lens, scale, window)
        assert rel_err(plain[case.seq_lens > 0], ref[case.seq_lens > 0]) > 10 * F32_TOL
    n = len(seq_lens)
    empty = case.seq_lens == 0
    ref[empty] = 0.0  # softmax over nothing: the kernel defines it as zeros, the reference NaN
    assert bool((out[:n][empty] == 0).all())
    assert not torch.isnan(out).any(), "output not fully written"
    if pad_rows:
        assert bool((out[n:] == 0).all())
    tol = F32_TOL if dtype == torch.float32 else LOW_TOL
    err = rel_err(out[:n], ref)
    assert err < tol, err


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (4, 1), (2, 2)])
def test_decode_gqa(heads, kv_heads, device):
    _run([5, 33, 17], heads, kv_heads, 32, 8, torch.float32, device)


@pytest.mark.parametrize("head_dim,block_size", [(80, 16), (64, 8)])
def test_decode_head_and_block_sizes(head_dim, block_size, device):
    _run([40, 7, 19], 4, 2, head_dim, block_size, torch.float32, device)


@pytest.mark.parametrize("num_splits", [2, 3])
def test_decode_split_kv(num_splits, device):
    # ragged: one sequence shorter than a split, one spanning all of them, one empty split tail
    _run([300, 9, 130], 4, 2, 32, 16, torch.float32, device, num_splits=num_splits)


def test_decode_more_splits_than_one_reduce_chunk(device):
    # 1300 tokens in 64-token splits: 21 splits, merged 16 at a time by the reduce kernel
    _run([1300, 9, 700], 4, 2, 32, 16, torch.float32, device, num_splits=40)


@pytest.mark.parametrize("num_splits", [1, 2])
def test_decode_sliding_window(num_splits, device):
    _run([70, 12, 45], 4, 2, 32, 8, torch.float32, device, window=20, num_splits=num_splits)


@pytest.mark.parametrize("num_splits,window", [(1, None), (2, None), (2, 20)])
def test_decode_logit_softcap(num_splits, window, device):
    _run([70, 12, 45], 4, 2, 32, 8, torch.float32, device, window=window, num_splits=num_splits,
         softcap=0.3)


def test_decode_padding_rows_and_empty_context(device):
    _run([0, 21], 2, 1, 32, 8, torch.float32, device, pad_rows=2)


def test_decode_rejects_bad_inputs(device):
    case = make_paged_case([9], [1], 4, 2, 32, 8, torch.float32, device)
    with pytest.raises(TypeError):
        paged_attention_decode(case.query, case.key_cache.half(), case.value_cache,
                               case.block_tables, case.seq_lens, 1.0, 9)
    with pytest.raises(TypeError):
        paged_attention_decode(case.query, case.key_cache, case.value_cache,
                               case.block_tables.long(), case.seq_lens, 1.0, 9)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 80, 96, 128, 256])
@pytest.mark.parametrize("block_size", [8, 16, 32])
def test_decode_gpu_real_shapes(dtype, head_dim, block_size):
    lens = torch.randint(1, 3000, (24,)).tolist() + [4096]
    _run(lens, 32, 8, head_dim, block_size, dtype, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("heads,kv_heads,window", [(32, 32, None), (16, 1, None), (32, 8, 1000)])
def test_decode_gpu_mha_mqa_window(heads, kv_heads, window):
    _run([1, 8000, 513, 2049], heads, kv_heads, 128, 16, torch.bfloat16, "cuda", window=window)
