"""Quantized Qwen3, Phi-3, Gemma 3 and Phi: FP8 at load, 4-bit weight-only checkpoints (GPTQ,
compressed-tensors pack-quantized) and W8A8 compressed-tensors checkpoints (INT8; Phi-3 also
static FP8), the last two quantized at test time by AutoRound, generate what the Llama tests'
references give (same greedy tokens, logprobs within 1e-3). Phi-3's checkpoints fuse qkv_proj /
gate_up_proj themselves, so its quantized tensors (packed zero points, shared g_idx,
weight_shape, per-tensor input scales) are split into the fused shards at load. The Qwen3 /
Phi-3 norms and SiLU emit W8A8 inputs quantized (fused); Gemma's and Phi's producers do not.
Mixture-of-experts models refuse quantization before loading."""
from __future__ import annotations

import json
import shutil

import pytest

import auto_round  # noqa: F401  (test extra: quantizes the checkpoints)

from engine import LLM, SamplingParams
from engine.quantization.input_quant import InputQuant
from tests.engine.quantization._reference import (quantize, reference_model,
                                                  w8a8_reference_model)
from tests.engine.quantization.test_fp8 import fp8_reference
from tests.engine.quantization.test_weight_only_checkpoints import _corrupt
from tests.engine.test_llm_vs_hf import hf_greedy

PROMPTS = ["Hello world", "The quick brown fox jumps over the lazy dog"]
MAX_TOKENS = 6
ARCHS = ["qwen3", "phi3", "gemma3", "phi"]
# (architecture, AutoRound export format, bits, group size, symmetric, quant_method in config)
WEIGHT_ONLY = [
    ("qwen3", "auto_gptq", 4, 32, True, "gptq"),
    ("phi3", "auto_gptq", 4, 32, True, "gptq"),
    ("phi3", "llm_compressor", 4, 32, False, "compressed-tensors"),
    ("gemma3", "llm_compressor", 4, 32, False, "compressed-tensors"),
    ("phi", "auto_gptq", 4, 32, True, "gptq"),
]
# Architectures whose decoder declares the RMSNorm / SiLU-and-mul input-quant fusions.
FUSED = ("qwen3", "phi3")


@pytest.fixture(scope="module")
def quantized(tiny_model_dir, tmp_path_factory):
    cache: dict = {}

    def get(arch, fmt, bits=4, group=32, sym=True, scheme=""):
        key = (arch, fmt, bits, group, sym, scheme)
        if key not in cache:
            cache[key] = quantize(tiny_model_dir(arch), tmp_path_factory.mktemp(arch), fmt, bits,
                                  group, sym, scheme)
        return cache[key]

    return get


def _model(llm: LLM):
    return llm.llm_engine.core.runner.model


def _assert_matches(llm: LLM, ref) -> None:
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=1)
    for out in llm.generate(PROMPTS, params, use_tqdm=False):
        tokens, logprobs = hf_greedy(ref, out.prompt_token_ids, MAX_TOKENS)
        got = out.outputs[0]
        assert got.token_ids == tokens, out.prompt
        for entry, tok, lp in zip(got.logprobs, tokens, logprobs):
            assert abs(entry[tok] - lp) < 1e-3


def _input_quant_producers(model) -> list:
    """output_quant of every module that can emit a quantized input."""
    return [m.output_quant for m in model.modules() if hasattr(m, "output_quant")]


@pytest.mark.parametrize("arch", ARCHS)
def test_fp8_at_load_matches_emulated_reference(arch, tiny_model_dir):
    path = tiny_model_dir(arch)
    llm = LLM(model=path, device="cpu", quantization="fp8", num_kv_blocks=64)
    assert llm.stats()["quantization"].startswith("fp8")
    _assert_matches(llm, fp8_reference(path, skip=("lm_head",)))


@pytest.mark.parametrize("case", WEIGHT_ONLY, ids=lambda c: f"{c[0]}-{c[1]}-w{c[2]}g{c[3]}")
def test_weight_only_matches_library_dequantized_reference(case, quantized):
    arch, fmt, bits, group, sym, method = case
    path = quantized(arch, fmt, bits, group, sym)
    llm = LLM(model=path, device="cpu", num_kv_blocks=64)
    assert llm.stats()["quantization"].startswith(method)
    _assert_matches(llm, reference_model(path))


@pytest.mark.parametrize("arch,scheme", [(a, "INT8_W8A8") for a in ARCHS]
                         + [("phi3", "FP8_STATIC")])
def test_w8a8_matches_reference(arch, scheme, quantized):
    """INT8 W8A8 (dynamic per-token inputs); Phi-3 also static FP8, whose per-tensor input scale
    of each checkpoint-fused module goes to every fused shard."""
    path = quantized(arch, "llm_compressor", scheme=scheme)
    llm = LLM(model=path, device="cpu", num_kv_blocks=64)
    kind = "int8" if scheme.startswith("INT8") else "fp8"
    assert llm.stats()["quantization"].startswith(f"compressed-tensors ({kind}")
    producers = _input_quant_producers(_model(llm))
    if arch in FUSED and kind == "int8":  # per layer: input norm, post-attn norm, SiLU-and-mul
        assert producers.count(InputQuant("int8")) == 3 * 2
    else:  # no fusable producer, or static input scales (quantized in the linear)
        assert all(p is None for p in producers)
    _assert_matches(llm, w8a8_reference_model(path))


def test_phi3_bad_fused_tensor_fails_naming_it(quantized, tmp_path):
    path = quantized("phi3", "auto_gptq")
    name = "model.layers.0.self_attn.qkv_proj.qzeros"
    bad = _corrupt(path, tmp_path / "qzeros", name, lambda z: z[:, :-1])
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        LLM(model=bad, device="cpu", num_kv_blocks=8)


@pytest.mark.parametrize("arch", ["qwen3_moe", "mixtral"])
def test_moe_quantization_fails_before_loading(arch, tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="does not support quantized weights.*mixture-of-experts"):
        LLM(model=tiny_model_dir(arch), device="cpu", quantization="fp8")
    path = shutil.copytree(tiny_model_dir(arch), tmp_path / "m")
    cfg = json.load(open(path / "config.json"))
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 32}
    json.dump(cfg, open(path / "config.json", "w"))
    with pytest.raises(ValueError, match="mixture-of-experts weights are not supported"):
        LLM(model=str(path), device="cpu")
