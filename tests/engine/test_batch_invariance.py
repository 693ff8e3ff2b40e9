"""A prompt's greedy output does not depend on its batch company or the token budget."""
from __future__ import annotations

import random

import pytest

from engine import LLM, SamplingParams

WORDS = "the of and to in is that for it as with was on be by at this from or an".split()


def mixed_prompts(n: int = 32) -> list[str]:
    rng = random.Random(7)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))) for _ in range(n)]


@pytest.mark.parametrize("budget", [16, 64, 2048])
def test_alone_equals_in_batch_tiny(budget, tiny_model_dir):
    llm = LLM(model=tiny_model_dir("llama"), device="cpu", max_num_batched_tokens=budget)
    prompts = mixed_prompts()
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    batch = llm.generate(prompts, params, use_tqdm=False)
    for i in (0, 5, 17, 31):
        alone = llm.generate(prompts[i], params, use_tqdm=False)[0]
        assert alone.outputs[0].token_ids == batch[i].outputs[0].token_ids


def test_alone_equals_in_batch_default_model(default_llm):
    prompts = mixed_prompts()
    params = SamplingParams(temperature=0, max_tokens=12)
    batch = default_llm.generate(prompts, params, use_tqdm=False)
    for i in (3, 20):
        alone = default_llm.generate(prompts[i], params, use_tqdm=False)[0]
        assert alone.outputs[0].token_ids == batch[i].outputs[0].token_ids
