"""Preemption by recompute, swap and auto keeps outputs identical and returns every block."""
from __future__ import annotations

import pytest

from engine import LLM, SamplingParams

PROMPTS = [f"Request number {i} says: " + "word " * (3 + 5 * i) for i in range(8)]


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    llm = LLM(model=tiny_model_dir("llama"), device="cpu")
    greedy = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
                          use_tqdm=False)
    seeded = llm.generate(PROMPTS, [SamplingParams(temperature=1.0, seed=i, max_tokens=40,
                                                   ignore_eos=True) for i in range(len(PROMPTS))],
                          use_tqdm=False)
    assert llm.stats()["num_preemptions"] == 0
    return [o.outputs[0].token_ids for o in greedy], [o.outputs[0].token_ids for o in seeded]


@pytest.mark.parametrize("mode", ["recompute", "swap", "auto"])
def test_preemption_keeps_outputs(mode, reference, tiny_model_dir):
    llm = LLM(model=tiny_model_dir("llama"), device="cpu", num_kv_blocks=14,
              preemption_mode=mode, max_num_batched_tokens=64, num_cpu_blocks=64)
    greedy = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
                          use_tqdm=False)
    mid = llm.stats()
    assert mid["num_preemptions"] > 0
    seeded = llm.generate(PROMPTS, [SamplingParams(temperature=1.0, seed=i, max_tokens=40,
                                                   ignore_eos=True) for i in range(len(PROMPTS))],
                          use_tqdm=False)
    assert [o.outputs[0].token_ids for o in greedy] == reference[0]
    assert [o.outputs[0].token_ids for o in seeded] == reference[1]
    stats = llm.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
    assert stats["num_swapped_out_blocks"] == 0
    assert stats["num_free_cpu_blocks"] == stats["num_total_cpu_blocks"]


def test_swap_falls_back_to_recompute_when_cpu_pool_is_full(reference, tiny_model_dir):
    llm = LLM(model=tiny_model_dir("llama"), device="cpu", num_kv_blocks=14,
              preemption_mode="swap", max_num_batched_tokens=64, num_cpu_blocks=1)
    greedy = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
                          use_tqdm=False)
    assert [o.outputs[0].token_ids for o in greedy] == reference[0]
    stats = llm.stats()
    assert stats["num_preemptions"] > 0
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
