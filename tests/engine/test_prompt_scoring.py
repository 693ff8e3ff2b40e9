"""Prompt logprobs (scoring) on a tiny fp32 Llama: equal to transformers' forward, the same with
chunked prefill, and complete when the prompt's prefix is in the prefix cache."""
from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from tests.fixtures_models import load_hf_model

PROMPTS = [
    "The quick brown fox jumps over the lazy dog and then runs far away into the forest where "
    "the trees are tall and the rivers run cold and clear over the stones",
    "Paged attention stores the KV cache in blocks",
]
K = 3


@pytest.fixture(scope="module")
def llama_path(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def reference(llama_path):
    """Per prompt: (token ids, log-softmax of HF's logits [T, V])."""
    llm = LLM(model=llama_path, device="cpu")
    tok = llm.get_tokenizer()
    hf = load_hf_model(llama_path)
    out = []
    for p in PROMPTS:
        ids = tok(p).input_ids
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0].float()
        out.append((ids, torch.log_softmax(logits, -1)))
    return out


def check_against_hf(prompt_ids, plp, ref_lp):
    assert plp[0] is None
    assert len(plp) == len(prompt_ids)
    top = ref_lp.topk(K, dim=-1).indices
    for pos in range(1, len(prompt_ids)):
        entry = plp[pos]
        tok = prompt_ids[pos]
        assert abs(entry[tok] - ref_lp[pos - 1, tok].item()) < 1e-4
        assert set(top[pos - 1].tolist()) <= set(entry)  # the top-K alternatives are there
        for t, v in entry.items():
            assert abs(v - ref_lp[pos - 1, t].item()) < 1e-4


@pytest.mark.parametrize("chunk", [512, 8])
def test_prompt_logprobs_equal_hf_chunked_or_not(llama_path, reference, chunk):
    llm = LLM(model=llama_path, device="cpu", max_num_batched_tokens=chunk,
              max_model_len=256)
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=K)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    for out, (ids, ref_lp) in zip(outs, reference):
        assert out.prompt_token_ids == ids
        check_against_hf(ids, out.prompt_logprobs, ref_lp)


def test_prefix_cache_hit_keeps_every_prompt_logprob(llama_path, reference):
    """The second run of a prompt (and a prompt sharing its first blocks) finds them cached;
    prompt logprobs must still cover every position, with the same values."""
    llm = LLM(model=llama_path, device="cpu", enable_prefix_caching=True, block_size=8)
    ids, ref_lp = reference[0]
    plain = SamplingParams(temperature=0, max_tokens=1)
    scored = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=K)
    llm.generate([{"prompt_token_ids": ids}], plain, use_tqdm=False)  # fills the cache
    again = llm.generate([{"prompt_token_ids": ids}], scored, use_tqdm=False)[0]
    check_against_hf(ids, again.prompt_logprobs, ref_lp)
    # A later request without prompt logprobs still uses the cache.
    hit = llm.generate([{"prompt_token_ids": ids}], plain, use_tqdm=False)[0]
    assert hit.num_cached_tokens >= 8
    stats = llm.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]


def test_prompt_logprobs_survive_recompute_preemption(llama_path):
    """A long prompt preempted (recompute) in the middle of its chunked prefill computes it
    again: its prompt logprobs are still one entry per position, as without preemption."""
    prompts = [f"Short {i} says hi" for i in range(4)] + ["long " * 120]
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, prompt_logprobs=1)
    ref = LLM(model=llama_path, device="cpu").generate(prompts, params, use_tqdm=False)
    llm = LLM(model=llama_path, device="cpu", num_kv_blocks=10, preemption_mode="recompute",
              max_num_batched_tokens=16)
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert llm.stats()["num_preemptions"] > 0
    for got, want in zip(outs, ref):
        assert len(got.prompt_logprobs) == len(want.prompt_logprobs) == len(want.prompt_token_ids)
        assert got.prompt_logprobs[0] is None
        for a, b in zip(got.prompt_logprobs[1:], want.prompt_logprobs[1:]):
            assert a.keys() == b.keys()
            assert all(abs(a[t] - b[t]) < 1e-4 for t in a)
        assert got.outputs[0].token_ids == want.outputs[0].token_ids
    stats = llm.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
