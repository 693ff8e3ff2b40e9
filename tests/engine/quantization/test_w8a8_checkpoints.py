"""W8A8 compressed-tensors checkpoints quantized at test time by AutoRound (llm_compressor
export): INT8 (per-channel weights, dynamic per-token activations) and static FP8 (per-channel
weights, calibrated per-tensor input scales). pagedserve's CPU path equals transformers fp32 with
the weights dequantized by compressed-tensors and each linear's input rounded per the scheme:
same greedy tokens, logprobs within 1e-3.

(transformers' own load of these checkpoints does not emulate the activation rounding on CPU, so
it is not the reference here.)"""
from __future__ import annotations

import pytest

import auto_round  # noqa: E402,F401  (test extra: quantizes the checkpoints)

from engine import LLM, SamplingParams  # noqa: E402
from tests.engine.quantization._reference import quantize, w8a8_reference_model  # noqa: E402
from tests.engine.test_llm_vs_hf import hf_greedy  # noqa: E402

PROMPTS = ["Hello world", "The quick brown fox jumps over the lazy dog"]
MAX_TOKENS = 8


@pytest.mark.parametrize("arch,scheme", [("llama", "INT8_W8A8"), ("opt", "INT8_W8A8"),
                                         ("llama", "FP8_STATIC")])
def test_w8a8_matches_reference(arch, scheme, tiny_model_dir, tmp_path):
    path = quantize(tiny_model_dir(arch), tmp_path, "llm_compressor", scheme=scheme)
    llm = LLM(model=path, device="cpu", num_kv_blocks=64)
    stats = llm.stats()
    assert stats["quantization"].startswith("compressed-tensors (" +
                                            ("int8" if scheme.startswith("INT8") else "fp8"))
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=1)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    ref = w8a8_reference_model(path)
    for out in outs:
        tokens, logprobs = hf_greedy(ref, out.prompt_token_ids, MAX_TOKENS)
        assert out.outputs[0].token_ids == tokens, out.prompt
        for entry, tok, lp in zip(out.outputs[0].logprobs, tokens, logprobs):
            assert abs(entry[tok] - lp) < 1e-3
