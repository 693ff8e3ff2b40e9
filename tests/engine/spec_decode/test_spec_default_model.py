"""The default model (real weights) on an input-grounded prompt: n-gram drafts get accepted and
greedy outputs equal those without speculation."""
from __future__ import annotations

from engine import LLM, SamplingParams

PROMPT = ("Here is a sentence: 'The committee approved funding for the new library and postponed "
          "the decision on the swimming pool.' Repeat the sentence exactly.\n\nThe committee")


def test_default_model_ngram_greedy_identical(default_llm):
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    want = default_llm.generate([PROMPT], params, use_tqdm=False)[0].outputs[0].token_ids
    llm = LLM(device="cpu", speculative_config={"method": "ngram", "num_speculative_tokens": 4,
                                                 "prompt_lookup_min": 2})
    got = llm.generate([PROMPT], params, use_tqdm=False)[0].outputs[0].token_ids
    assert got == want
    stats = llm.stats()
    assert stats["spec_decode_num_accepted_tokens"] > 0
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
