"""Beam search equals HF transformers' `generate(num_beams=...)` token for token (fp32).

Random tiny models almost never emit their EOS token, so most cases end beams on a stop token the
model does emit (a token from its greedy output): on our side `stop_token_ids=[t]` with
`ignore_eos=True`, on HF's `eos_token_id=t`. Both then have exactly one terminator.
"""
from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from tests.fixtures_models import load_hf_model

PROMPTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog",
    "one two three four five six seven",
]
MAX_TOKENS = 12
# (width, n, length_penalty, early_stopping)
CASES = [(2, 1, 1.0, False), (2, 2, 1.5, False), (4, 4, 0.5, True), (4, 2, 2.0, "never")]


def hf_beams(model, prompt_ids: list[int], width: int, n: int, max_new: int, eos: int | None,
             length_penalty: float = 1.0, early_stopping=False, pad: int = 0) -> list[list[int]]:
    """HF's n best beams, each cut after its terminator (HF pads shorter beams)."""
    out = model.generate(torch.tensor([prompt_ids]), num_beams=width, num_return_sequences=n,
                         do_sample=False, max_new_tokens=max_new, eos_token_id=eos,
                         pad_token_id=pad, length_penalty=length_penalty,
                         early_stopping=early_stopping)
    beams = []
    for row in out[:, len(prompt_ids):].tolist():
        if eos is not None and eos in row:
            row = row[:row.index(eos) + 1]
        beams.append(row)
    return beams


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def setup(request, tiny_model_dir):
    path = tiny_model_dir(request.param)
    # A small batch budget splits prompts into chunks and some steps' beams over two steps.
    llm = LLM(model=path, device="cpu", num_kv_blocks=96, max_num_batched_tokens=6)
    tok = llm.get_tokenizer()
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    greedy = llm.generate([{"prompt_token_ids": i} for i in ids],
                          SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
                          use_tqdm=False)
    stops = [g.outputs[0].token_ids[3] for g in greedy]
    return llm, load_hf_model(path), ids, stops, path


@pytest.mark.parametrize("width,n,length_penalty,early_stopping", CASES)
def test_beam_search_equals_hf(setup, width, n, length_penalty, early_stopping):
    llm, hf, ids, stops, _ = setup
    params = [SamplingParams(n=n, best_of=width, use_beam_search=True, temperature=0,
                             max_tokens=MAX_TOKENS, ignore_eos=True, stop_token_ids=[stop],
                             length_penalty=length_penalty, early_stopping=early_stopping)
              for stop in stops]
    outs = llm.generate([{"prompt_token_ids": i} for i in ids], params, use_tqdm=False)
    for out, prompt_ids, stop in zip(outs, ids, stops):
        ref = hf_beams(hf, prompt_ids, width, n, MAX_TOKENS, stop, length_penalty, early_stopping)
        got = [o.token_ids for o in out.outputs]
        assert got == ref, f"prompt {prompt_ids}"
        for o in out.outputs:
            assert o.finish_reason == ("stop" if o.token_ids[-1] == stop else "length")
    stats = llm.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
    assert stats["num_running"] == stats["num_waiting"] == 0


def test_stop_tokens_end_beams(setup):
    """The stop token is actually hit in some beams (the cases above exercise hypotheses)."""
    llm, _, ids, stops, _ = setup
    params = [SamplingParams(n=4, best_of=4, use_beam_search=True, temperature=0,
                             max_tokens=MAX_TOKENS, ignore_eos=True, stop_token_ids=[s])
              for s in stops]
    outs = llm.generate([{"prompt_token_ids": i} for i in ids], params, use_tqdm=False)
    reasons = [o.finish_reason for out in outs for o in out.outputs]
    assert "stop" in reasons


def test_ignore_eos_and_max_model_len(setup):
    """Without terminators every beam runs to the length limit set by max_model_len."""
    _, hf, ids, _, path = setup
    prompt = ids[1]
    llm = LLM(model=path, device="cpu", num_kv_blocks=32, max_model_len=len(prompt) + 5)
    out = llm.generate({"prompt_token_ids": prompt},
                       SamplingParams(n=3, use_beam_search=True, temperature=0, max_tokens=None,
                                      ignore_eos=True), use_tqdm=False)[0]
    assert [o.token_ids for o in out.outputs] == hf_beams(hf, prompt, 3, 3, 5, None)
    assert all(o.finish_reason == "length" for o in out.outputs)


def test_default_model_equals_hf(default_llm, hf_default_model):
    tok = default_llm.get_tokenizer()
    prompt = tok("The capital of France is")["input_ids"]
    out = default_llm.generate({"prompt_token_ids": prompt},
                               SamplingParams(n=2, use_beam_search=True, temperature=0,
                                              max_tokens=8, length_penalty=0.8),
                               use_tqdm=False)[0]
    ref = hf_beams(hf_default_model, prompt, 2, 2, 8, tok.eos_token_id, 0.8,
                   pad=tok.eos_token_id)
    assert [o.token_ids for o in out.outputs] == ref
