"""Speculation with CUDA graphs: the target's graphs return the auxiliary hidden states an
EAGLE-3 head reads, and a draft model's runner replays graphs of its own.

Capture needs CUDA: here every runner's `capture_graphs` installs graphs that run their
captured forward again on the static buffers at each replay (tests/graph_replay.py), with the
Triton kernels under the CPU interpreter. So the engine's order (the proposer is set up, then the
target captures), what a captured forward returns and the graph path's tokens are checked;
tests/gpu/test_gpu_spec_decode.py runs the same on real graphs.
"""
from __future__ import annotations

import pytest

from engine import LLM, SamplingParams
from tests.engine.spec_decode.test_spec_eagle3 import _random_head
from tests.graph_replay import capture_eagerly, replays

PROMPTS = [f"Request number {i} says: " + "word " * (3 + 5 * i) for i in range(2)]
GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
# Small graph sets: the interpreter runs every captured size once at capture.
SMALL = dict(device="cpu", dtype="float32", attention_backend="triton", max_num_seqs=4,
             max_num_batched_tokens=32, max_cuda_graph_tokens=32, num_kv_blocks=96,
             max_model_len=128)


def _tokens(llm):
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]


@pytest.fixture(scope="module")
def target(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def reference(target):
    """Without speculation or graphs (the pure-torch attention: quicker than the interpreter,
    the same tokens in float32)."""
    return _tokens(LLM(model=target, **{**SMALL, "attention_backend": "torch"}))


def test_eagle3_target_runs_graphs_with_auxiliary_states(target, reference, tmp_path,
                                                          monkeypatch):
    captured = capture_eagerly(monkeypatch)
    head = _random_head(tmp_path / "head")
    llm = LLM(model=target, speculative_config={"method": "eagle3", "model": head,
                                                "num_speculative_tokens": 3}, **SMALL)
    runner = llm.llm_engine.core.runner
    assert captured == [runner]
    # Captured after the head set the target's auxiliary layers: every graph returns them.
    outputs = list(runner.graphs.outputs.values()) + list(runner.graphs.mixed_outputs.values())
    assert outputs and all(isinstance(o, tuple) and o[1].shape[1] == 3 * o[0].shape[1]
                           for o in outputs)
    observed = []
    proposer = llm.llm_engine.core.speculator.proposer
    observe = proposer.observe
    runner.forward_observers[runner.forward_observers.index(observe)] = \
        lambda sched, inputs, hidden, aux: (observed.append(aux is not None),
                                            observe(sched, inputs, hidden, aux))
    before = replays(runner.graphs)
    assert _tokens(llm) == reference
    decode, mixed = (a - b for a, b in zip(replays(runner.graphs), before))
    assert mixed > 0  # verify chunks (and prompts) replay mixed graphs
    assert observed and all(observed)
    stats = llm.stats()
    assert stats["spec_decode_num_drafts"] > 0
    assert stats["num_free_blocks"] == stats["num_total_blocks"]


def test_draft_model_runner_replays_graphs(target, reference, monkeypatch):
    captured = capture_eagerly(monkeypatch)
    llm = LLM(model=target, speculative_config={"method": "draft_model", "model": target,
                                                "num_speculative_tokens": 3}, **SMALL)
    core = llm.llm_engine.core
    draft_runner = core.speculator.proposer.runner
    assert captured == [draft_runner, core.runner]
    before = replays(draft_runner.graphs)
    assert _tokens(llm) == reference
    decode, mixed = (a - b for a, b in zip(replays(draft_runner.graphs), before))
    assert decode > 0 and mixed > 0  # single-token drafting steps and catch-up chunks
    stats = llm.stats()
    # The draft is the target itself: every draft is accepted.
    assert stats["spec_decode_acceptance_rate"] == 1.0, stats
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
