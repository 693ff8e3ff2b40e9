"""Prefill / chunked-prefill paged attention vs the torch reference."""
from __future__ import annotations

import pytest
import torch

from gpu_kernels.prefill_attention import prefill_attention, prefill_attention_ref
from tests.kernels._paged import make_paged_case, poisoned_like, rel_err

F32_TOL = 1e-4
LOW_TOL = 2e-2


def _run(seq_lens, query_lens, heads, kv_heads, head_dim, block_size, dtype, device,
         window=None, config=None, pad_rows=0, softcap=None):
    case = make_paged_case(seq_lens, query_lens, heads, kv_heads, head_dim, block_size, dtype,
                           device)
    query = case.query
    if pad_rows:
        query = torch.cat([query, torch.randn(pad_rows, heads, head_dim, dtype=dtype,
                                              device=device)])
    scale = head_dim ** -0.5
    out = poisoned_like(query)
    prefill_attention(query, case.key_cache, case.value_cache, case.block_tables, case.seq_lens,
                      case.query_start_loc, scale, max(query_lens), sliding_window=window,
                      out=out, config=config, softcap=softcap)
    ref = prefill_attention_ref(case.query, case.key_cache, case.value_cache, case.block_tables,
                                case.seq_lens, case.query_start_loc, scale,
                                sliding_window=window, softcap=softcap)
    if softcap:  # the cap must matter for the comparison to mean anything
        plain = prefill_attention_ref(case.query, case.key_cache, case.value_cache,
                                      case.block_tables, case.seq_lens, case.query_start_loc,
                                      scale, sliding_window=window)
        assert rel_err(plain, ref) > 10 * F32_TOL
    total = sum(query_lens)
    assert not torch.isnan(out).any(), "output not fully written"
    if pad_rows:
        assert bool((out[total:] == 0).all())
    tol = F32_TOL if dtype == torch.float32 else LOW_TOL
    err = rel_err(out[:total], ref)
    assert err < tol, err


SMALL = dict(block_m=16, block_n=16, num_warps=4, num_stages=1)


def test_prefill_fresh_prompts_ragged(device):
    # whole prompts (ctx 0), lengths not multiples of the tiles
    _run([37, 5, 20], [37, 5, 20], 4, 2, 32, 8, torch.float32, device, config=SMALL)


def test_prefill_chunked_with_cached_prefix(device):
    # chunks after a cached prefix, mixed with decodes (q_len 1) and a zero-length entry
    _run([50, 23, 9, 30], [13, 1, 0, 30], 4, 1, 32, 16, torch.float32, device, config=SMALL)


@pytest.mark.parametrize("head_dim,block_size", [(80, 8), (64, 32)])
def test_prefill_head_and_block_sizes(head_dim, block_size, device):
    _run([45, 18], [20, 18], 2, 2, head_dim, block_size, torch.float32, device, config=SMALL)


def test_prefill_unaligned_tiles(device):
    # block_m 32 / block_n 16 with a prefix that is not a multiple of block_n
    _run([70, 41], [40, 33], 4, 2, 32, 8, torch.float32, device,
         config=dict(block_m=32, block_n=16, num_warps=4, num_stages=1))


def test_prefill_sliding_window(device):
    _run([60, 25], [30, 25], 4, 2, 32, 8, torch.float32, device, window=11, config=SMALL)


@pytest.mark.parametrize("window", [None, 11])
def test_prefill_logit_softcap(window, device):
    _run([60, 25], [30, 25], 4, 2, 32, 8, torch.float32, device, window=window, config=SMALL,
         softcap=0.3)


def test_prefill_padding_rows(device):
    _run([12, 7], [4, 7], 2, 1, 32, 8, torch.float32, device, config=SMALL, pad_rows=3)


def test_prefill_default_config(device):
    _run([19, 6], [19, 2], 2, 1, 32, 8, torch.float32, device)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim,block_size", [(64, 16), (80, 8), (96, 32), (128, 16), (256, 16)])
def test_prefill_gpu_real_shapes(dtype, head_dim, block_size):
    seq_lens = [2048, 1000, 3000, 517, 64]
    query_lens = [2048, 1000, 700, 1, 64]  # whole prompts, a chunk after a prefix, a decode
    _run(seq_lens, query_lens, 32, 8, head_dim, block_size, dtype, "cuda")


@pytest.mark.gpu
def test_prefill_gpu_window_and_mqa():
    _run([4096, 1500], [1024, 1500], 16, 1, 128, 16, torch.bfloat16, "cuda", window=700)
