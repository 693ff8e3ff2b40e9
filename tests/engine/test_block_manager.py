"""Block manager: random interleavings of allocate/append/fork/CoW/free/swap/prefix caching never
leak or double-free, and reference counts always equal the references held."""
from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.block_manager import BlockManager
from engine.sampling_params import SamplingParams
from engine.sequence import Request, SequenceStatus

BS = 4

OPS = st.lists(st.tuples(st.sampled_from(["new", "append", "fork", "free", "swap_out", "swap_in"]),
                         st.integers(0, 1000), st.integers(1, 9)), min_size=1, max_size=60)


def check(bm: BlockManager, reqs: list[Request]) -> None:
    bm.gpu.check_consistency()
    bm.cpu.check_consistency()
    gpu_refs, cpu_refs = Counter(), Counter()
    for r in reqs:
        for s in r.live_seqs():
            target = cpu_refs if s.status == SequenceStatus.SWAPPED else gpu_refs
            target.update(s.block_table)
            assert len(s.block_table) * BS >= s.num_computed_tokens
    for pool, refs in ((bm.gpu, gpu_refs), (bm.cpu, cpu_refs)):
        for b in pool.blocks:
            assert b.ref_count == refs.get(b.block_id, 0)
        assert pool.num_free + pool.num_used == pool.num_blocks


def run_ops(ops, caching: bool) -> None:
    bm = BlockManager(num_gpu_blocks=24, num_cpu_blocks=16, block_size=BS,
                      enable_prefix_caching=caching)
    reqs: list[Request] = []
    next_id = 0
    shared_prefix = list(range(100, 112))  # common tokens so prefix caching gets hits
    for op, pick, n in ops:
        running = [r for r in reqs if r.live_seqs() and r.live_seqs()[0].status == SequenceStatus.RUNNING]
        swapped = [r for r in reqs if r.live_seqs() and r.live_seqs()[0].status == SequenceStatus.SWAPPED]
        if op == "new":
            prompt = (shared_prefix if pick % 2 else []) + [pick % 50 + j for j in range(n)]
            req = Request(str(next_id), prompt, SamplingParams(), [next_id], eos_token_id=None)
            next_id += 1
            seq = req.seqs[0]
            hit = bm.match_prefix(seq, len(prompt))
            assert hit < len(prompt)
            need = bm.blocks_needed(seq, len(prompt) - hit)
            if need > bm.num_free_gpu_blocks:
                bm.undo_prefix_match(seq, hit, len(prompt))
                continue
            bm.allocate_slots(seq, len(prompt) - hit)
            seq.num_computed_tokens = len(prompt)
            bm.register_computed(seq)
            seq.status = SequenceStatus.RUNNING
            reqs.append(req)
        elif op == "append" and running:
            req = running[pick % len(running)]
            seq = req.live_seqs()[pick % len(req.live_seqs())]
            # Like decoding: tokens exist before their KV is computed.
            seq.token_ids.extend(range(n))
            if bm.blocks_needed(seq, n) > bm.num_free_gpu_blocks:
                seq.token_ids[-n:] = []
                continue
            shared_before = [b for b in seq.block_table if bm.gpu.ref_count(b) > 1]
            copies = bm.allocate_slots(seq, n)
            for src, dst in copies:
                assert src in shared_before and dst in seq.block_table
            seq.num_computed_tokens += n
            bm.register_computed(seq)
        elif op == "fork" and running:
            req = running[pick % len(running)]
            parent = req.live_seqs()[0]
            from engine.sequence import Sequence
            child = Sequence(10_000 + next_id, len(req.seqs), parent.token_ids)
            next_id += 1
            bm.fork(parent, child)
            child.status = SequenceStatus.RUNNING
            req.seqs.append(child)
        elif op == "free" and reqs:
            req = reqs[pick % len(reqs)]
            live = req.live_seqs()
            if live:
                seq = live[pick % len(live)]
                pool = bm.cpu if seq.status == SequenceStatus.SWAPPED else bm.gpu
                bm.free_seq(seq, pool)
                seq.status = SequenceStatus.FINISHED_ABORTED
        elif op == "swap_out" and running:
            req = running[pick % len(running)]
            if bm.can_swap_out(req):
                pairs = bm.swap_out(req)
                assert len(pairs) == len({g for g, _ in pairs})
                for s in req.live_seqs():
                    s.status = SequenceStatus.SWAPPED
        elif op == "swap_in" and swapped:
            req = swapped[pick % len(swapped)]
            if bm.can_swap_in(req, {}):
                bm.swap_in(req)
                for s in req.live_seqs():
                    s.status = SequenceStatus.RUNNING
        check(bm, reqs)
    for req in reqs:
        for seq in req.live_seqs():
            pool = bm.cpu if seq.status == SequenceStatus.SWAPPED else bm.gpu
            bm.free_seq(seq, pool)
            seq.status = SequenceStatus.FINISHED_ABORTED
    check(bm, reqs)
    assert bm.gpu.num_free == bm.gpu.num_blocks and bm.cpu.num_free == bm.cpu.num_blocks


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_random_ops_never_leak(ops):
    run_ops(ops, caching=False)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_random_ops_with_prefix_caching_never_leak(ops):
    run_ops(ops, caching=True)


def test_cow_copies_only_the_shared_partial_block():
    bm = BlockManager(8, 0, BS)
    req = Request("r", list(range(6)), SamplingParams(), [0], None)
    a = req.seqs[0]
    bm.allocate_slots(a, 6)
    a.num_computed_tokens = 6
    from engine.sequence import Sequence
    b = Sequence(1, 1, a.token_ids)
    bm.fork(a, b)
    assert b.block_table == a.block_table and bm.gpu.ref_count(a.block_table[1]) == 2
    copies = bm.allocate_slots(b, 1)
    assert len(copies) == 1 and copies[0][0] == a.block_table[1]
    assert b.block_table[0] == a.block_table[0] and b.block_table[1] != a.block_table[1]
    assert bm.gpu.ref_count(a.block_table[0]) == 2 and bm.gpu.ref_count(a.block_table[1]) == 1


def test_prefix_cache_hit_leaves_one_token_and_evicts_lru():
    bm = BlockManager(6, 0, BS, enable_prefix_caching=True)
    prompt = list(range(12))  # exactly 3 full blocks
    r1 = Request("a", prompt, SamplingParams(), [0], None)
    s1 = r1.seqs[0]
    bm.allocate_slots(s1, 12)
    s1.num_computed_tokens = 12
    bm.register_computed(s1)
    bm.free_seq(s1)
    r2 = Request("b", prompt, SamplingParams(), [1], None)
    s2 = r2.seqs[0]
    assert bm.match_prefix(s2, 12) == 8  # the last block is recomputed so a token is left
    assert bm.prefix_cache_hits == 8 and bm.prefix_cache_queries == 12
    bm.free_seq(s2)
    # Fill the pool: cached blocks are evicted only after uncached free blocks are used up.
    hogs = [bm.gpu.allocate() for _ in range(3)]
    assert len(bm.gpu.cached) == 3
    hogs += [bm.gpu.allocate() for _ in range(3)]
    assert not bm.gpu.cached
    for b in hogs:
        bm.gpu.decref(b)
    with pytest.raises(RuntimeError):
        bm.gpu.decref(hogs[0])
