"""Speculation under async scheduling: steps that may carry drafts run synchronously (their
proposals need the latest tokens), the rest overlap; nothing observable changes."""
from __future__ import annotations

import pytest

from engine import LLM, SamplingParams

PROMPTS = [f"Request number {i} says: " + "word " * (3 + 5 * i) for i in range(5)]
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def _self_draft(path: str, **extra) -> dict:
    # The target drafting for itself: greedy drafts are all accepted (long verify chunks).
    return {"method": "draft_model", "model": path, "num_speculative_tokens": 3, **extra}


def _run(llm, params=GREEDY, prompts=PROMPTS):
    return [[(c.token_ids, c.finish_reason) for c in o.outputs]
            for o in llm.generate(prompts, params, use_tqdm=False)]


def _no_leak(llm):
    stats = llm.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]


@pytest.fixture(scope="module")
def path(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def reference(path):
    return _run(LLM(model=path, device="cpu", async_scheduling=False))


def test_draft_model_with_async_scheduling(path, reference):
    llm = LLM(model=path, device="cpu", async_scheduling=True,
              speculative_config=_self_draft(path))
    assert _run(llm) == reference
    stats = llm.stats()
    assert stats["spec_decode_num_accepted_tokens"] > 0
    _no_leak(llm)
    # Sampled, seeded, n > 1 (decodes plainly) and penalties: the same as without overlap.
    params = [SamplingParams(temperature=0.9, seed=i, max_tokens=12, n=1 + i % 2,
                             repetition_penalty=1.2 if i == 3 else 1.0) for i in range(5)]
    sync = LLM(model=path, device="cpu", async_scheduling=False,
               speculative_config=_self_draft(path))
    assert _run(llm, params) == _run(sync, params)
    _no_leak(llm)


def test_large_batches_overlap_small_ones_draft(path, reference):
    """With disable_by_batch_size, batches above it decode plainly and their steps overlap;
    once the batch shrinks, drafting (synchronous steps) resumes."""
    llm = LLM(model=path, device="cpu", async_scheduling=True,
              speculative_config=_self_draft(path, disable_by_batch_size=2))
    engine = llm.llm_engine
    params = [SamplingParams(temperature=0, max_tokens=8 + 6 * i, ignore_eos=True)
              for i in range(5)]
    for i, (prompt, p) in enumerate(zip(PROMPTS, params)):
        engine.add_request(str(i), prompt, p)
    overlapped, tokens = 0, {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.request_id] = out.outputs[0].token_ids
        step = engine.core._inflight
        overlapped += bool(step is not None and step.overlappable)
    assert overlapped > 0 and llm.stats()["spec_decode_num_accepted_tokens"] > 0
    want = [o[0][0] for o in _run(LLM(model=path, device="cpu", async_scheduling=False),
                                 params)]
    assert [tokens[str(i)] for i in range(5)] == want
    _no_leak(llm)


def test_ngram_with_async_scheduling(path):
    prompts = ["one two three four one two three four one two", "a b c a b c a b"]
    spec = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}
    llm = LLM(model=path, device="cpu", async_scheduling=True, speculative_config=spec)
    plain = LLM(model=path, device="cpu", async_scheduling=False)
    assert _run(llm, prompts=prompts) == _run(plain, prompts=prompts)
    _no_leak(llm)


def test_eagle3_refuses_async_scheduling(path):
    spec = {"method": "eagle3", "model": path, "num_speculative_tokens": 2}
    with pytest.raises(ValueError, match="async_scheduling"):
        LLM(model=path, device="cpu", async_scheduling=True, speculative_config=spec)


def test_verification_is_read_at_finish_not_launch(path, reference):
    """A verify step's launch queues the verification and returns: its outcome is read when
    the step finishes (after the previous step's outputs went back), and outputs are unchanged."""
    from engine.spec_decode.verifier import PendingVerify

    llm = LLM(model=path, device="cpu", async_scheduling=True,
              speculative_config={"method": "ngram", "num_speculative_tokens": 3})
    runner = llm.llm_engine.core.runner
    seen = []
    launch, finish = runner.launch, runner.finish

    def spy_launch(*args, **kwargs):
        step = launch(*args, **kwargs)
        if step.verify is not None:
            assert isinstance(step.verify, PendingVerify) and not step.result.verified
            seen.append(step)
        return step

    def spy_finish(step):
        result = finish(step)
        assert step.verify is None
        return result

    runner.launch, runner.finish = spy_launch, spy_finish
    assert _run(llm) == reference
    assert seen and all(s.result.verified for s in seen)
    assert llm.stats()["spec_decode_num_drafts"] > 0
    _no_leak(llm)
