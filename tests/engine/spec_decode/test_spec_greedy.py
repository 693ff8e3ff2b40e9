"""Greedy outputs are identical with speculative decoding on and off, and no block leaks."""
from __future__ import annotations

import pytest

from engine import LLM, SamplingParams

# Repetitive prompts so that n-gram lookup proposes (and some drafts are accepted).
PROMPTS = ["one two three four one two three four one two three",
           "Request number 7 says: " + "word " * 12,
           "a b c d e f g a b c d e f g a b c",
           "The cat sat on the mat. The cat sat on the"]
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1,
         "prompt_lookup_max": 3}


def _tokens(llm, prompts=PROMPTS, params=GREEDY):
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]


def _no_leak(llm):
    stats = llm.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]


@pytest.fixture(scope="module")
def llama_reference(tiny_model_dir):
    return _tokens(LLM(model=tiny_model_dir("llama"), device="cpu"))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen3"])
def test_ngram_greedy_identical(arch, tiny_model_dir, llama_reference):
    path = tiny_model_dir(arch)
    ref = llama_reference if arch == "llama" else _tokens(LLM(model=path, device="cpu"))
    llm = LLM(model=path, device="cpu", speculative_config=NGRAM)
    assert _tokens(llm) == ref
    stats = llm.stats()
    assert stats["spec_decode_num_drafts"] > 0
    assert stats["spec_decode_num_draft_tokens"] >= stats["spec_decode_num_accepted_tokens"]
    _no_leak(llm)


@pytest.mark.parametrize("draft", ["same", "smaller"])
def test_draft_model_greedy_identical(draft, tiny_model_dir, llama_reference):
    target = tiny_model_dir("llama")
    path = target if draft == "same" else tiny_model_dir("llama", num_hidden_layers=1)
    llm = LLM(model=target, device="cpu",
              speculative_config={"method": "draft_model", "model": path,
                                  "num_speculative_tokens": 3})
    assert _tokens(llm) == llama_reference
    stats = llm.stats()
    assert stats["spec_decode_num_drafts"] > 0
    if draft == "same":  # the target drafting for itself: every greedy draft is accepted
        assert stats["spec_decode_num_accepted_tokens"] == stats["spec_decode_num_draft_tokens"]
        assert stats["spec_decode_accepted_by_position"][2] > 0
    _no_leak(llm)


def test_disable_by_batch_size(tiny_model_dir, llama_reference):
    """Past `disable_by_batch_size` decoding requests no step drafts; at or below it they do.
    Outputs are the same either way."""
    path = tiny_model_dir("llama")
    off = LLM(model=path, device="cpu",
              speculative_config={**NGRAM, "disable_by_batch_size": len(PROMPTS) - 1})
    assert _tokens(off) == llama_reference
    assert off.stats()["spec_decode_num_drafts"] == 0
    alone = _tokens(off, PROMPTS[:1])
    assert alone == llama_reference[:1] and off.stats()["spec_decode_num_drafts"] > 0
    with pytest.raises(ValueError, match="speculative_config.disable_by_batch_size"):
        LLM(model=path, device="cpu", speculative_config={**NGRAM, "disable_by_batch_size": 0})
