"""Memory sharing: parallel samples and beams on shared blocks (copy-on-write), automatic prefix
caching, and preemption of multi-sequence requests. Outputs are checked against runs that share
nothing (n=1 with the per-sample seed, caching off, a pool large enough never to preempt)."""
from __future__ import annotations

import pytest

from engine import LLM, SamplingParams
from engine.block_manager import BlockManager
from engine.sequence import Request

BLOCK = 16
PROMPT_200 = [100 + (37 * i) % 3000 for i in range(200)]
PREFIX_192 = [200 + (53 * i) % 3000 for i in range(192)]


def ids(out) -> list[list[int]]:
    return [o.token_ids for o in out.outputs]


def assert_all_free(llm: LLM) -> None:
    stats = llm.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
    assert stats["num_free_cpu_blocks"] == stats["num_total_cpu_blocks"]
    assert stats["num_running"] == stats["num_waiting"] == stats["num_swapped"] == 0
    llm.llm_engine.core.block_manager.gpu.check_consistency()


def sample(n: int, seed: int, best_of: int | None = None, max_tokens: int = 16) -> SamplingParams:
    return SamplingParams(n=n, best_of=best_of, temperature=1.0, seed=seed,
                          max_tokens=max_tokens, ignore_eos=True)


def beams(width: int, max_tokens: int = 10) -> SamplingParams:
    return SamplingParams(n=width, use_beam_search=True, temperature=0, max_tokens=max_tokens,
                          ignore_eos=True)


@pytest.fixture(scope="module")
def model(tiny_model_dir) -> str:
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def ref_llm(model) -> LLM:
    """A pool large enough that nothing is ever preempted; no prefix caching."""
    return LLM(model=model, device="cpu", num_kv_blocks=512)


def test_n4_shares_the_prompt_and_cow_keeps_samples_independent(model, ref_llm):
    # Four unshared copies need 4 * ceil(216 / 16) = 56 blocks (52 for the prompts alone);
    # shared: 12 full prompt blocks + per sample a private copy of the partial block + 1 more.
    llm = LLM(model=model, device="cpu", num_kv_blocks=24)
    out = llm.generate({"prompt_token_ids": PROMPT_200}, sample(4, seed=7), use_tqdm=False)[0]
    stats = llm.stats()
    assert stats["num_preemptions"] == 0
    assert stats["peak_blocks"] <= 20
    assert stats["sharing_saved_frac"] > 0.5
    samples = ids(out)
    assert len(samples) == 4 and len({tuple(s) for s in samples}) == 4
    # Sample i is seeded with seed + i: equal to that seed run alone, so no sample's KV was
    # overwritten by a sibling writing into a shared block.
    alone = ref_llm.generate([{"prompt_token_ids": PROMPT_200}] * 4,
                             [sample(1, seed=7 + i) for i in range(4)], use_tqdm=False)
    assert samples == [o.outputs[0].token_ids for o in alone]
    assert_all_free(llm)


def test_best_of_returns_the_n_best_by_cumulative_logprob(ref_llm):
    prompt = {"prompt_token_ids": PROMPT_200[:40]}
    out = ref_llm.generate(prompt, sample(2, seed=11, best_of=4), use_tqdm=False)[0]
    alone = [ref_llm.generate(prompt, sample(1, seed=11 + i), use_tqdm=False)[0].outputs[0]
             for i in range(4)]
    best = sorted(alone, key=lambda c: -c.cumulative_logprob)[:2]
    assert ids(out) == [c.token_ids for c in best]
    for got, want in zip(out.outputs, best):
        assert got.cumulative_logprob == pytest.approx(want.cumulative_logprob, abs=1e-4)


def test_fork_cow_and_swap_move_shared_blocks_once():
    """Block-level: forked siblings share the prompt; CoW copies only the written partial block;
    swapping moves each shared block once and keeps it shared."""
    bm = BlockManager(num_gpu_blocks=20, num_cpu_blocks=20, block_size=4)
    req = Request("r", list(range(10)), sample(3, seed=0), [0, 1, 2], eos_token_id=None)
    leader, a, b = req.seqs
    assert bm.allocate_slots(leader, 10) == []
    leader.num_computed_tokens = 10
    for s in (a, b):
        bm.fork(leader, s)
    assert bm.gpu.num_used == 3 and bm.gpu.ref_count(leader.block_table[0]) == 3
    copies = []
    for i, s in enumerate(req.seqs):
        s.append_token(50 + i, 0.0)
        copies += bm.allocate_slots(s, 1)
    # The first two writers copy the shared partial block; the last one owns it by then.
    assert len(copies) == 2 and bm.gpu.num_used == 5
    assert len({s.block_table[2] for s in req.seqs}) == 3
    assert len({s.block_table[0] for s in req.seqs}) == 1
    pairs = bm.swap_out(req)
    assert len(pairs) == 5 and bm.gpu.num_used == 0 and bm.cpu.num_used == 5
    pairs = bm.swap_in(req)
    assert len(pairs) == 5 and bm.cpu.num_used == 0
    assert bm.gpu.ref_count(a.block_table[1]) == 3
    for s in req.seqs:
        bm.free_seq(s)
    assert bm.gpu.num_free == 20
    bm.gpu.check_consistency()


# ---- prefix caching ----------------------------------------------------------------------------
def test_prefix_cache_hits_a_shared_192_token_prefix(model, ref_llm):
    llm = LLM(model=model, device="cpu", num_kv_blocks=64, enable_prefix_caching=True)
    first = {"prompt_token_ids": PREFIX_192 + [11, 12, 13, 14, 15, 16, 17, 18]}
    second = {"prompt_token_ids": PREFIX_192 + [21, 22, 23, 24]}
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    out1 = llm.generate(first, greedy, use_tqdm=False)[0]
    before = llm.stats()
    out2 = llm.generate(second, greedy, use_tqdm=False)[0]
    after = llm.stats()
    hit = after["prefix_cache_hit_tokens"] - before["prefix_cache_hit_tokens"]
    query = after["prefix_cache_query_tokens"] - before["prefix_cache_query_tokens"]
    assert hit >= 176 and query == 196
    assert out2.num_cached_tokens == hit
    # A fully cached prompt still computes its last token (which yields the first logits).
    again = llm.generate(first, greedy, use_tqdm=False)[0]
    assert again.num_cached_tokens == 192
    # Identical to caching off, also for samples and beams forked from cached blocks.
    mixed = [first, second, first, second]
    params = [greedy, greedy, sample(3, seed=5, max_tokens=8), beams(3, max_tokens=8)]
    cached = llm.generate(mixed, params, use_tqdm=False)
    plain = ref_llm.generate(mixed, params, use_tqdm=False)
    assert [ids(o) for o in cached] == [ids(o) for o in plain]
    assert ids(out1) == ids(plain[0]) and ids(out2) == ids(plain[1]) and ids(again) == ids(plain[0])
    assert_all_free(llm)


def test_prefix_cache_eviction_keeps_outputs_and_leaks_nothing(model, ref_llm):
    # Each request: 96-token prefix (6 full blocks) + 4 + 8 generated = 7 blocks of a 16-block pool.
    prefixes = [[300 + 97 * j + (31 * i) % 2000 for i in range(96)] for j in range(4)]
    prompts = [{"prompt_token_ids": p + [1, 2, 3, 4]} for p in prefixes]
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    llm = LLM(model=model, device="cpu", num_kv_blocks=16, enable_prefix_caching=True)
    expected = [ids(o) for o in ref_llm.generate(prompts, greedy, use_tqdm=False)]
    hits = []
    for j in [0, 0, 1, 2, 3, 0]:
        before = llm.stats()["prefix_cache_hit_tokens"]
        assert ids(llm.generate(prompts[j], greedy, use_tqdm=False)[0]) == expected[j]
        hits.append(llm.stats()["prefix_cache_hit_tokens"] - before)
    assert hits[0] == 0 and hits[1] == 96  # cached right after the first run
    assert hits[-1] < 96  # ... and evicted (least recently used) after three other prefixes
    # All four at once do not fit: preemption and eviction together.
    assert [ids(o) for o in llm.generate(prompts, greedy, use_tqdm=False)] == expected
    assert_all_free(llm)


# ---- preemption of multi-sequence requests --------------------------------------------------
@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_keeps_samples_and_beams(mode, model, ref_llm):
    # Beams arrive last, so they are the ones preempted, in the middle of their search.
    prompts = [{"prompt_token_ids": PROMPT_200[i * 7:i * 7 + 20 + 9 * i]} for i in range(4)]
    params = [sample(3, seed=1, max_tokens=16), sample(2, seed=2, best_of=3, max_tokens=16),
              beams(3, max_tokens=16), beams(2, max_tokens=16)]
    expected = [ids(o) for o in ref_llm.generate(prompts, params, use_tqdm=False)]
    llm = LLM(model=model, device="cpu", num_kv_blocks=10, preemption_mode=mode,
              max_num_batched_tokens=32, num_cpu_blocks=64)
    core = llm.llm_engine.core
    preempted = []  # (request id, beam search?, outputs so far) at each preemption
    preempt = core.scheduler._preempt

    def record(req, out):
        preempt(req, out)
        preempted.append((req.request_id, req.params.use_beam_search, req.seqs[0].num_output_tokens))

    core.scheduler._preempt = record
    got = [ids(o) for o in llm.generate(prompts, params, use_tqdm=False)]
    # Both kinds were preempted after they had forked and generated.
    assert any(beam and n_out > 0 for _, beam, n_out in preempted), preempted
    assert any(not beam and n_out > 0 for _, beam, n_out in preempted), preempted
    assert got == expected
    assert_all_free(llm)
