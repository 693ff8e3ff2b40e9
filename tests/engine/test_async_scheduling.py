"""Async scheduling (step N+1 launched before step N's tokens reach the host) changes nothing
observable: same tokens, same finish reasons, blocks all returned. On the CPU the launch is
synchronous, but every placeholder/resolve/stop path is the same code the GPU runs."""
from __future__ import annotations

import pytest

from engine import LLM, SamplingParams

PROMPTS = [f"Request {i}: " + "alpha beta gamma " * (1 + 3 * i) for i in range(6)]


def count_overlapped(llm, params) -> int:
    """Steps of one request (PROMPTS[0]) that overlapped with the next one's launch."""
    engine = llm.llm_engine
    engine.add_request("overlap", PROMPTS[0], params)
    overlapped = 0
    while engine.has_unfinished_requests():
        engine.step()
        step = engine.core._inflight
        overlapped += bool(step is not None and step.overlappable)
    return overlapped


def run(llm, params):
    return [[(c.token_ids, c.finish_reason, c.text) for c in o.outputs]
            for o in llm.generate(PROMPTS, params, use_tqdm=False)]


@pytest.fixture(scope="module")
def engines(tiny_model_dir):
    path = tiny_model_dir("llama")
    return (LLM(model=path, device="cpu", async_scheduling=False),
            LLM(model=path, device="cpu", async_scheduling=True))


def mixed_params():
    return [
        SamplingParams(temperature=0, max_tokens=20, ignore_eos=True),
        SamplingParams(temperature=0.9, seed=3, max_tokens=17),
        SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[11]),
        SamplingParams(temperature=0.7, seed=5, max_tokens=15, repetition_penalty=1.3),
        SamplingParams(temperature=0, max_tokens=18, stop=[" beta"], min_tokens=2),
        SamplingParams(temperature=0.8, seed=9, n=2, max_tokens=10),
    ]


def test_min_tokens_overlaps_and_keeps_outputs(engines):
    """min_tokens masks stop tokens by count, placeholders included: the steps still overlap
    and the tokens and finish reasons are the synchronous ones."""
    sync, asy = engines
    params = [SamplingParams(temperature=0, max_tokens=20, min_tokens=20, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=16, min_tokens=6, stop_token_ids=[11, 12]),
              SamplingParams(temperature=0.9, seed=4, max_tokens=14, min_tokens=9,
                             stop_token_ids=list(range(40)))] * 2
    assert run(asy, params) == run(sync, params)
    assert count_overlapped(asy, params[0]) >= 15


def test_async_equals_sync(engines):
    sync, asy = engines
    assert asy.llm_engine.core.async_scheduling and not sync.llm_engine.core.async_scheduling
    for params in (SamplingParams(temperature=0, max_tokens=24, ignore_eos=True),
                   SamplingParams(temperature=1.0, seed=1, max_tokens=24, logprobs=2),
                   mixed_params()):
        assert run(asy, params) == run(sync, params)
    stats = asy.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_async_preemption_keeps_outputs(mode, engines, tiny_model_dir):
    sync, _ = engines
    small = LLM(model=tiny_model_dir("llama"), device="cpu", async_scheduling=True,
                num_kv_blocks=10, preemption_mode=mode, max_num_batched_tokens=48)
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    assert run(small, params) == run(sync, params)
    stats = small.stats()
    assert stats["num_preemptions"] > 0
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
    assert stats["num_free_cpu_blocks"] == stats["num_total_cpu_blocks"]


def test_async_abort_mid_flight_frees_blocks(engines):
    _, asy = engines
    engine = asy.llm_engine
    params = SamplingParams(temperature=0, max_tokens=50, ignore_eos=True)
    engine.add_request("a", PROMPTS[0], params)
    engine.add_request("b", PROMPTS[1], params)
    for _ in range(4):
        engine.step()
    assert engine.core._inflight is not None
    engine.abort_request("a")
    outs = []
    while engine.has_unfinished_requests():
        outs += engine.step()
    done = [o for o in outs if o.finished]
    assert [o.request_id for o in done] == ["b"] and len(done[0].outputs[0].token_ids) == 50
    stats = asy.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]


def test_async_with_prefix_caching(engines, tiny_model_dir):
    sync, _ = engines
    cached = LLM(model=tiny_model_dir("llama"), device="cpu", async_scheduling=True,
                 enable_prefix_caching=True, block_size=4)
    shared = "The shared system prompt says many things about many topics. " * 3
    prompts = [shared + f"Question {i}?" for i in range(4)]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    ref = [o.outputs[0].token_ids for o in sync.generate(prompts, params, use_tqdm=False)]
    first = [o.outputs[0].token_ids for o in cached.generate(prompts, params, use_tqdm=False)]
    again = [o.outputs[0].token_ids for o in cached.generate(prompts, params, use_tqdm=False)]
    assert first == ref and again == ref
    stats = cached.stats()
    assert stats["prefix_cache_hit_tokens"] > 0
    assert stats["num_free_blocks"] == stats["num_total_blocks"]


def test_constrained_requests_overlap_and_keep_outputs(engines):
    """A grammar's mask needs the latest token: such steps launch their forward pass before
    the previous step's tokens are known and sample after. Outputs equal the synchronous
    engine's, grammars end their sequences, and the steps overlap."""
    from engine.structured_output import StructuredOutputsParams as SO
    sync, asy = engines
    schema = {"type": "object", "properties": {"a": {"type": "integer"},
                                               "b": {"type": "string", "maxLength": 6}},
              "required": ["a", "b"], "additionalProperties": False}
    params = [SamplingParams(temperature=0, max_tokens=40, structured_outputs=SO(json=schema)),
              SamplingParams(temperature=0.9, seed=2, max_tokens=30,
                             structured_outputs=SO(regex=r"[a-c]{3,9}")),
              SamplingParams(temperature=0, max_tokens=20, ignore_eos=True),
              SamplingParams(temperature=0.8, seed=6, max_tokens=10,
                             structured_outputs=SO(choice=["yes", "no", "maybe"])),
              SamplingParams(temperature=1.0, seed=7, max_tokens=40,
                             structured_outputs=SO(json=schema)),
              SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[11])]
    want = run(sync, params)
    runner = asy.llm_engine.core.runner
    threaded = []  # deferred samplings launched on the runner's sampling thread
    sample = runner.sample
    runner.sample = lambda step, background=False: (
        threaded.append(step.logits is not None and background),
        sample(step, background=background))[1]
    try:
        assert run(asy, params) == want
    finally:
        runner.sample = sample
    assert sum(threaded) >= 10
    assert want[3][0][2] in ("yes", "no", "maybe") and want[3][0][1] == "stop"
    assert count_overlapped(asy, SamplingParams(
        temperature=0, max_tokens=30, ignore_eos=True,
        structured_outputs=SO(regex=r"[a-z ]+"))) >= 20
    stats = asy.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]


def test_penalised_requests_overlap_and_keep_outputs(engines):
    """Penalties read the tokens seen so far: like a grammar's mask, their sampling waits for the
    previous step's tokens while the forward pass runs. Outputs equal the synchronous engine's
    (the history excludes the in-flight placeholder) and the steps overlap."""
    sync, asy = engines
    params = [SamplingParams(temperature=0, max_tokens=24, repetition_penalty=1.8,
                             ignore_eos=True),
              SamplingParams(temperature=0.9, seed=2, max_tokens=20, presence_penalty=1.5),
              SamplingParams(temperature=0, max_tokens=20, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=22, frequency_penalty=2.0,
                             repetition_penalty=0.7, ignore_eos=True),
              SamplingParams(temperature=0.8, seed=6, max_tokens=16, frequency_penalty=-1.0),
              SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[11])]
    want = run(sync, params)
    plain = run(sync, SamplingParams(temperature=0, max_tokens=22, ignore_eos=True))
    assert want[3][0][0] != plain[3][0][0]  # the penalties changed the tokens
    assert run(asy, params) == want
    assert count_overlapped(asy, params[0]) >= 15
    stats = asy.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
