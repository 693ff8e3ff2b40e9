"""Bad input gets a ValueError naming the problem, and leaves nothing allocated."""
from __future__ import annotations

import json
import os

import pytest

from engine import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(model=tiny_model_dir("llama"), device="cpu", max_model_len=64, num_kv_blocks=16)


def assert_clean(llm):
    stats = llm.stats()
    assert stats["num_free_blocks"] == stats["num_total_blocks"]
    assert not llm.llm_engine.has_unfinished_requests()


@pytest.mark.parametrize("prompt,params,match", [
    ("", SamplingParams(max_tokens=4), "prompt: the prompt is empty"),
    ({"prompt_token_ids": []}, SamplingParams(max_tokens=4), "prompt: the prompt is empty"),
    ({"prompt_token_ids": [1, 10**9]}, SamplingParams(max_tokens=4), "prompt_token_ids"),
    ("word " * 40, SamplingParams(max_tokens=40), "maximum context length is 64 tokens"),
])
def test_bad_prompts(llm, prompt, params, match):
    with pytest.raises(ValueError, match=match):
        llm.generate(prompt, params, use_tqdm=False)
    assert_clean(llm)


def test_one_bad_prompt_leaves_nothing_of_the_call(llm):
    with pytest.raises(ValueError, match="maximum context length"):
        llm.generate(["fine", "also fine", "word " * 80], SamplingParams(max_tokens=4),
                     use_tqdm=False)
    assert_clean(llm)
    out = llm.generate("fine", SamplingParams(max_tokens=3, ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 3
    assert_clean(llm)


def test_request_larger_than_pool_is_refused(tiny_model_dir):
    small = LLM(model=tiny_model_dir("llama"), device="cpu", max_model_len=512, num_kv_blocks=4)
    with pytest.raises(ValueError, match="max_tokens: the request needs up to"):
        small.generate("hello", SamplingParams(max_tokens=100), use_tqdm=False)
    assert_clean(small)


@pytest.mark.parametrize("kwargs,field", [
    ({"max_tokens": 0}, "max_tokens"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"n": 0}, "n"),
    ({"n": 2, "best_of": 1}, "best_of"),
    ({"min_p": 2.0}, "min_p"),
    ({"stop": [""]}, "stop"),
    ({"logprobs": -1}, "logprobs"),
])
def test_sampling_params_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        SamplingParams(**kwargs)


def test_unknown_model_path():
    with pytest.raises(ValueError, match="does-not-exist"):
        LLM(model="/nonexistent/does-not-exist", device="cpu")


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["FancyNewForCausalLM"], "model_type": "llama", "vocab_size": 10,
        "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2}))
    with pytest.raises(ValueError, match="FancyNewForCausalLM.*LlamaForCausalLM"):
        LLM(model=str(tmp_path), device="cpu", load_format="dummy")


def test_unknown_engine_option():
    with pytest.raises(ValueError, match="^not_an_option: unknown engine option"):
        LLM(model=os.devnull, not_an_option=1)


def test_bad_engine_config_values(tiny_model_dir):
    with pytest.raises(ValueError, match="^preemption_mode:"):
        LLM(model=tiny_model_dir("llama"), device="cpu", preemption_mode="teleport")
    with pytest.raises(ValueError, match="^block_size:"):
        LLM(model=tiny_model_dir("llama"), device="cpu", block_size=3)
