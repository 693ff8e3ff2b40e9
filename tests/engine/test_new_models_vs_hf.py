"""Phi, Phi-3, Qwen3, Gemma 3 and the MoE models: batched greedy generation equals HF transformers
token for token in fp32 (logprobs within 1e-4), with chunked prefill and preemption both on; and
the seeds' example (a local Phi folder, temperature 0.8, top_p 0.95) runs."""
from __future__ import annotations

import pytest

from engine import LLM, SamplingParams
from tests.engine.test_llm_vs_hf import PROMPTS, hf_greedy
from tests.fixtures_models import NEW_ARCHS, load_hf_model

MAX_TOKENS = 12


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_greedy_batch_with_preemption_equals_hf(arch, tiny_model_dir):
    path = tiny_model_dir(arch)
    # 5 blocks of 16 slots cannot hold the five sequences at once: some are preempted and
    # recomputed; 32-token steps split the longer prompts into chunks.
    llm = LLM(model=path, device="cpu", max_num_batched_tokens=32, num_kv_blocks=5)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=2)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    stats = llm.stats()
    assert stats["num_preemptions"] > 0
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
    hf = load_hf_model(path)
    for out in outs:
        ref_tokens, ref_logprobs = hf_greedy(hf, out.prompt_token_ids, MAX_TOKENS)
        got = out.outputs[0]
        assert got.token_ids == ref_tokens, f"{arch}: {out.prompt!r}"
        for entry, tok, ref in zip(got.logprobs, got.token_ids, ref_logprobs):
            assert abs(entry[tok] - ref) < 1e-4


def test_seeds_example_runs_on_a_local_phi_folder(tiny_model_dir):
    llm = LLM(model=tiny_model_dir("phi"))
    params = SamplingParams(temperature=0.8, top_p=0.95)
    outs = llm.generate(["Hello, my name is", "The future of AI is"], params, use_tqdm=False)
    assert len(outs) == 2
    for out in outs:
        assert out.outputs[0].token_ids and isinstance(out.outputs[0].text, str)
