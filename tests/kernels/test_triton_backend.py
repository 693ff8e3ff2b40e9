"""TritonAttentionBackend vs TorchAttentionBackend on the same step: write K/V, then attend."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("msgspec")  # the engine package needs it; absent on the bare GPU image

from engine.attention.backend import TorchAttentionBackend, get_attention_backend
from engine.attention.metadata import AttentionMetadata
from engine.attention.triton_backend import TritonAttentionBackend
from tests.kernels._paged import make_paged_case, rel_err


def _meta(case, query_lens, seq_lens, block_size, device):
    slots = []
    tables = case.block_tables.cpu()
    for i, (q, s) in enumerate(zip(query_lens, seq_lens)):
        for pos in range(s - q, s):
            slots.append(int(tables[i, pos // block_size]) * block_size + pos % block_size)
    return AttentionMetadata(
        num_seqs=len(seq_lens), num_tokens=sum(query_lens),
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc=case.query_start_loc, seq_lens=case.seq_lens,
        block_tables=case.block_tables, max_query_len=max(query_lens),
        max_seq_len=max(seq_lens), query_lens_cpu=list(query_lens), seq_lens_cpu=list(seq_lens))


@pytest.mark.parametrize("query_lens,seq_lens", [
    ([1, 1, 1], [12, 30, 7]),
    ([1, 9, 4], [12, 30, 7]),
    # >= 4 leading decodes: the backend splits them off to the decode kernel
    ([1, 1, 1, 1, 1, 9, 4], [12, 30, 7, 5, 17, 20, 6]),
], ids=["decode", "mixed", "mixed_split"])
@pytest.mark.parametrize("softcap", [None, 0.4])
def test_triton_backend_matches_torch(query_lens, seq_lens, softcap, device):
    heads, kvh, d, bs = 4, 2, 32, 8
    # no shared blocks: both sequences would write their new tokens into the shared block
    case = make_paged_case(seq_lens, query_lens, heads, kvh, d, bs, torch.float32, device,
                           share_prefix=False)
    meta = _meta(case, query_lens, seq_lens, bs, device)
    k_new = torch.randn(meta.num_tokens, kvh, d, device=device)
    v_new = torch.randn(meta.num_tokens, kvh, d, device=device)
    outs = []
    for backend in (TritonAttentionBackend(), TorchAttentionBackend()):
        kc, vc = case.key_cache.clone(), case.value_cache.clone()
        backend.write_kv(k_new, v_new, kc, vc, meta)
        outs.append((backend.attend(case.query, kc, vc, meta, d ** -0.5, softcap=softcap),
                     kc, vc))
    (o_t, kc_t, vc_t), (o_r, kc_r, vc_r) = outs
    assert torch.equal(kc_t, kc_r) and torch.equal(vc_t, vc_r)
    assert rel_err(o_t, o_r) < 1e-4


def test_backend_registry_name():
    assert TritonAttentionBackend.name == "triton"
    assert get_attention_backend("triton", torch.device("cpu")).name == "triton"


@pytest.mark.parametrize("window,softcap", [(None, None), (24, None), (24, 50.0)])
def test_warm_up_runs_every_variant_and_leaves_the_cache_alone(window, softcap, device):
    from engine.layers.attention import Attention
    layer = Attention(4, 32, 32 ** -0.5, num_kv_heads=2, sliding_window=window,
                      logit_softcap=softcap)
    kc = torch.randn(12, 8, 2, 32, device=device)
    vc = torch.randn(12, 8, 2, 32, device=device)
    layer.kv_cache = (kc.clone(), vc.clone())
    TritonAttentionBackend().warm_up(layer, max_model_len=80)
    assert torch.equal(layer.kv_cache[0], kc) and torch.equal(layer.kv_cache[1], vc)


@pytest.mark.parametrize("window,softcap", [(None, None), (10, None), (10, 0.4)])
def test_mixed_layout_matches_torch(window, softcap, device):
    """The static layout a mixed-step CUDA graph replays (MixedLayout): padded rows, decode
    rows offered to the decode kernel, prefills in fixed slots (two of three used)."""
    from engine.attention.metadata import MixedLayout
    query_lens, seq_lens = [1, 1, 9, 4], [12, 30, 20, 6]
    heads, kvh, d, bs, pad_rows, slots = 4, 2, 32, 8, 3, 3
    case = make_paged_case(seq_lens, query_lens, heads, kvh, d, bs, torch.float32, device,
                           share_prefix=False)
    meta = _meta(case, query_lens, seq_lens, bs, device)
    kc, vc = case.key_cache, case.value_cache
    ref = TorchAttentionBackend().attend(case.query, kc, vc, meta, d ** -0.5, window,
                                         softcap=softcap)

    n, nd, t = meta.num_tokens, 2, meta.num_tokens + pad_rows
    query = torch.cat([case.query, torch.randn(pad_rows, heads, d, device=device)])
    width = case.block_tables.shape[1]
    dec_tables = torch.zeros(t, width, dtype=torch.int32, device=device)
    dec_tables[:nd] = case.block_tables[:nd]
    dec_lens = torch.zeros(t, dtype=torch.int32, device=device)
    dec_lens[:nd] = case.seq_lens[:nd]
    pf_tables = torch.zeros(slots, width, dtype=torch.int32, device=device)
    pf_tables[:2] = case.block_tables[nd:]
    pf_lens = torch.ones(slots, dtype=torch.int32, device=device)
    pf_lens[:2] = case.seq_lens[nd:]
    pf_qsl = torch.full((slots + 1,), n, dtype=torch.int32, device=device)
    pf_qsl[:3] = case.query_start_loc[nd:]
    mixed = AttentionMetadata(
        num_seqs=t, num_tokens=t, slot_mapping=meta.slot_mapping, query_start_loc=meta.query_start_loc,
        seq_lens=dec_lens, block_tables=dec_tables, max_query_len=t, max_seq_len=64,
        mixed=MixedLayout(pf_tables, pf_lens, pf_qsl))
    out = TritonAttentionBackend().attend(query, kc, vc, mixed, d ** -0.5, window,
                                          softcap=softcap)
    assert out.shape == (t, heads, d)
    assert rel_err(out[:n], ref) < 1e-4
    assert torch.count_nonzero(out[n:]) == 0
