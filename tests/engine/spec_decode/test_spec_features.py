"""Speculative decoding with the rest of the engine: preemption, chunked prefill, stop
conditions, n > 1, prefix caching, seeded sampling, bad configuration."""
from __future__ import annotations

import pytest

from engine import LLM, SamplingParams

PROMPTS = [f"Request number {i} says: " + "word " * (3 + 5 * i) for i in range(5)]
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def _tokens(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def _spec(path: str, k: int = 4) -> dict:
    # The target drafting for itself: every greedy draft is accepted, so verify chunks are
    # long and accepted tokens overshoot stop conditions.
    return {"method": "draft_model", "model": path, "num_speculative_tokens": k}


def _no_leak(llm):
    stats = llm.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
    assert stats["num_swapped_out_blocks"] == 0


@pytest.fixture(scope="module")
def path(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def plain(path):
    return LLM(model=path, device="cpu")


@pytest.fixture(scope="module")
def spec_llm(path):
    return LLM(model=path, device="cpu", speculative_config=_spec(path))


@pytest.fixture(scope="module")
def reference(plain):
    return _tokens(plain.generate(PROMPTS, GREEDY, use_tqdm=False))


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_mid_speculation(mode, path, reference):
    llm = LLM(model=path, device="cpu", num_kv_blocks=9, preemption_mode=mode,
              max_num_batched_tokens=64, num_cpu_blocks=64, speculative_config=_spec(path))
    assert _tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == reference
    stats = llm.stats()
    assert stats["num_preemptions"] > 0 and stats["spec_decode_num_accepted_tokens"] > 0
    _no_leak(llm)


def test_mixed_batch_with_chunked_prefill(path, plain, spec_llm):
    long_prompts = [" ".join(f"w{i}x{j}" for j in range(25)) for i in range(2)]
    prompts = PROMPTS[:3] + long_prompts
    ref = _tokens(plain.generate(prompts, GREEDY, use_tqdm=False))
    llm = LLM(model=path, device="cpu", max_num_batched_tokens=20,
              speculative_config=_spec(path))
    assert _tokens(llm.generate(prompts, GREEDY, use_tqdm=False)) == ref
    _no_leak(llm)


def test_stop_conditions_truncate_after_acceptance(spec_llm, plain, reference):
    stop_tok = reference[0][7]
    first = reference[0].index(stop_tok)
    cases = [SamplingParams(temperature=0, max_tokens=5, ignore_eos=True),
             SamplingParams(temperature=0, max_tokens=24, stop_token_ids=[stop_tok]),
             SamplingParams(temperature=0, max_tokens=24, stop_token_ids=[stop_tok],
                            min_tokens=first + 2)]
    for params in cases:
        want = plain.generate(PROMPTS[:1], params, use_tqdm=False)[0].outputs[0]
        got = spec_llm.generate(PROMPTS[:1], params, use_tqdm=False)[0].outputs[0]
        assert got.token_ids == want.token_ids
        assert got.finish_reason == want.finish_reason
    assert len(spec_llm.generate(PROMPTS[:1], cases[0], use_tqdm=False)[0].outputs[0].token_ids) == 5
    # A stop string (the frontend's) inside a multi-token step.
    text = plain.generate(PROMPTS[:1], GREEDY, use_tqdm=False)[0].outputs[0].text
    stop = text[len(text) // 2:len(text) // 2 + 4]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop])
    want = plain.generate(PROMPTS[:1], params, use_tqdm=False)[0].outputs[0]
    got = spec_llm.generate(PROMPTS[:1], params, use_tqdm=False)[0].outputs[0]
    assert (got.text, got.finish_reason) == (want.text, want.finish_reason)
    _no_leak(spec_llm)


def test_logprobs_are_the_targets(spec_llm, plain):
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)
    want = plain.generate(PROMPTS[:2], params, use_tqdm=False)
    got = spec_llm.generate(PROMPTS[:2], params, use_tqdm=False)
    for w, g in zip(want, got):
        assert g.outputs[0].token_ids == w.outputs[0].token_ids
        for lw, lg in zip(w.outputs[0].logprobs, g.outputs[0].logprobs):
            assert lw.keys() == lg.keys()
            for tok in lw:
                assert abs(_lp(lw[tok]) - _lp(lg[tok])) < 1e-4


def _lp(x):
    return getattr(x, "logprob", x)


def _drafts(llm) -> int:
    return llm.stats()["spec_decode_num_drafts"]


def test_n_greater_than_one_speculates(spec_llm, plain):
    """Each of a request's n sequences drafts and verifies on its own (after the fork)."""
    top1 = SamplingParams(n=3, temperature=0.7, top_k=1, seed=1, max_tokens=12, ignore_eos=True)
    before = _drafts(spec_llm)
    got = spec_llm.generate(PROMPTS[1:2], top1, use_tqdm=False)[0]
    assert _drafts(spec_llm) - before >= 3  # every sequence drafted
    want = plain.generate(PROMPTS[1:2], top1, use_tqdm=False)[0]
    assert [c.token_ids for c in got.outputs] == [c.token_ids for c in want.outputs]
    params = [GREEDY, SamplingParams(n=2, temperature=1.0, seed=3, max_tokens=12, ignore_eos=True),
              top1]
    first = [[c.token_ids for c in o.outputs]
             for o in spec_llm.generate(PROMPTS[:3], params, use_tqdm=False)]
    again = [[c.token_ids for c in o.outputs]
             for o in spec_llm.generate(PROMPTS[:3], params, use_tqdm=False)]
    assert first == again  # seeded: reproducible
    assert first[0] == [c.token_ids for c in plain.generate(PROMPTS[:1], GREEDY,
                                                            use_tqdm=False)[0].outputs]
    _no_leak(spec_llm)


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_n_greater_than_one_preempted_mid_speculation(mode, path, plain):
    params = SamplingParams(n=2, temperature=0.7, top_k=1, seed=5, max_tokens=20,
                            ignore_eos=True)
    want = [[c.token_ids for c in o.outputs]
            for o in plain.generate(PROMPTS, params, use_tqdm=False)]
    llm = LLM(model=path, device="cpu", num_kv_blocks=12, preemption_mode=mode,
              max_num_batched_tokens=64, num_cpu_blocks=64, speculative_config=_spec(path))
    got = [[c.token_ids for c in o.outputs] for o in llm.generate(PROMPTS, params, use_tqdm=False)]
    assert got == want
    stats = llm.stats()
    assert stats["num_preemptions"] > 0 and stats["spec_decode_num_accepted_tokens"] > 0
    _no_leak(llm)


def test_prefix_caching(path, reference):
    llm = LLM(model=path, device="cpu", enable_prefix_caching=True,
              speculative_config={"method": "ngram", "num_speculative_tokens": 3})
    for _ in range(2):
        assert _tokens(llm.generate(PROMPTS, GREEDY, use_tqdm=False)) == reference
    assert llm.stats()["prefix_cache_hits"] > 0


def test_seeded_sampling_reproducible(spec_llm, path):
    # A low temperature, so that sampled positions accept drafts too.
    params = [SamplingParams(temperature=0.3, top_p=0.95, seed=i, max_tokens=10, ignore_eos=True)
              for i in range(3)]
    before = spec_llm.stats()["spec_decode_num_accepted_tokens"]
    a = _tokens(spec_llm.generate(PROMPTS[:3], params, use_tqdm=False))
    assert spec_llm.stats()["spec_decode_num_accepted_tokens"] > before
    b = _tokens(spec_llm.generate(PROMPTS[:3], params, use_tqdm=False))
    c = _tokens(spec_llm.generate(PROMPTS[:1], params[:1], use_tqdm=False))  # other company
    assert a == b and a[0] == c[0]


def test_beam_search_with_speculation_is_rejected(spec_llm):
    params = SamplingParams(temperature=0, n=2, use_beam_search=True, max_tokens=5)
    with pytest.raises(ValueError, match="use_beam_search"):
        spec_llm.generate(PROMPTS[:1], params, use_tqdm=False)


@pytest.mark.parametrize("config,field", [
    ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens"),
    ({"method": "ngram", "num_speculative_tokens": 17}, "num_speculative_tokens"),
    ({"method": "medusa", "num_speculative_tokens": 2}, "method"),
    ({"method": "draft_model", "num_speculative_tokens": 2}, "model"),
    ({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 3,
      "prompt_lookup_max": 2}, "prompt_lookup_max"),
    ({"method": "ngram", "num_speculative_tokens": 2, "lookahead": 1}, "lookahead"),
])
def test_bad_config(config, field, path):
    with pytest.raises(ValueError, match=f"speculative_config.{field}"):
        LLM(model=path, device="cpu", speculative_config=config)


def test_draft_vocabulary_mismatch(path, tiny_model_dir):
    with pytest.raises(ValueError, match="speculative_config.model: the draft model's vocab"):
        LLM(model=path, device="cpu", speculative_config=_spec(tiny_model_dir("gpt2")))


def test_penalties_apply_per_position(spec_llm, plain):
    # Each verify position is penalised with the history up to it (drafts included).
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True,
                            repetition_penalty=1.5, frequency_penalty=0.7, presence_penalty=0.3,
                            logit_bias={17: 3.0})
    want = _tokens(plain.generate(PROMPTS[:2], params, use_tqdm=False))
    assert _tokens(spec_llm.generate(PROMPTS[:2], params, use_tqdm=False)) == want


def test_constrained_requests_decode_plainly_beside_speculating_ones(spec_llm, plain):
    """A request with an output grammar takes no drafts (its mask advances token by token):
    its output is the same as without speculation and matches the regex, while unconstrained
    requests in the same batch keep speculating."""
    from engine.structured_output import StructuredOutputsParams
    constrained = SamplingParams(temperature=0, max_tokens=24,
                                 structured_outputs=StructuredOutputsParams(regex=r"[0-9]{3}-x"))
    before = spec_llm.stats()["spec_decode_num_draft_tokens"]
    outs = spec_llm.generate(PROMPTS[:2], [constrained, GREEDY], use_tqdm=False)
    ref = plain.generate(PROMPTS[:2], [constrained, GREEDY], use_tqdm=False)
    assert _tokens(outs) == _tokens(ref)
    assert __import__("re").fullmatch(r"[0-9]{3}-x", outs[0].outputs[0].text)
    assert spec_llm.stats()["spec_decode_num_draft_tokens"] > before
    _no_leak(spec_llm)
