"""The default model (SmolLM2-135M-Instruct GGUF) against transformers' load of the same file."""
from __future__ import annotations

import torch

from engine import SamplingParams

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Name three colours."}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
]


def test_greedy_chat_equals_hf(default_llm, hf_default_model):
    tok = default_llm.get_tokenizer()
    params = SamplingParams(temperature=0, max_tokens=24)
    outs = default_llm.chat(CHATS, params, use_tqdm=False)
    for conv, out in zip(CHATS, outs):
        text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        assert out.prompt_token_ids == ids[0].tolist()
        ref = hf_default_model.generate(ids, max_new_tokens=24, do_sample=False,
                                        eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.eos_token_id)
        ref_tokens = ref[0, ids.shape[1]:].tolist()
        got = out.outputs[0]
        assert got.token_ids == ref_tokens
        assert got.text == tok.decode(ref_tokens, skip_special_tokens=True)
        assert got.finish_reason == ("stop" if ref_tokens[-1] == tok.eos_token_id else "length")
    assert "Paris" in outs[0].outputs[0].text


def test_prompt_logprobs_match_forward(default_llm, hf_default_model):
    prompt = "The capital of France is Paris. The capital of Italy is"
    out = default_llm.generate(prompt, SamplingParams(temperature=0, max_tokens=2,
                                                      prompt_logprobs=1), use_tqdm=False)[0]
    ids = torch.tensor([out.prompt_token_ids])
    with torch.no_grad():
        logits = hf_default_model(ids).logits[0].float()
    ref = torch.log_softmax(logits, -1)
    assert out.prompt_logprobs[0] is None
    assert len(out.prompt_logprobs) == len(out.prompt_token_ids)
    for pos in range(1, ids.shape[1]):
        tok = out.prompt_token_ids[pos]
        assert abs(out.prompt_logprobs[pos][tok] - ref[pos - 1, tok].item()) < 1e-4
