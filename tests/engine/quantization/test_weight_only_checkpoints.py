"""W4A16 / W8A16 checkpoints quantized at test time by AutoRound (GPTQ, AWQ, AutoRound-native and
compressed-tensors exports) load in pagedserve and generate what the libraries' own dequantized
weights give in transformers (fp32): same greedy tokens, logprobs within 1e-3. Bad checkpoints
and unknown methods fail at load, naming the tensor / the supported methods."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

import auto_round  # noqa: E402,F401  (test extra: quantizes the checkpoints)

from engine import LLM, SamplingParams  # noqa: E402
from tests.engine.quantization._reference import quantize, reference_model  # noqa: E402
from tests.engine.test_llm_vs_hf import hf_greedy  # noqa: E402

PROMPTS = ["Hello world", "The quick brown fox jumps over the lazy dog", "A"]
MAX_TOKENS = 8
# (architecture, AutoRound export format, bits, group size, symmetric, quant_method in config)
CASES = [
    ("llama", "auto_gptq", 4, 32, True, "gptq"),
    ("llama", "auto_gptq", 8, -1, True, "gptq"),
    ("llama", "auto_awq", 4, 64, False, "awq"),
    ("llama", "auto_round", 4, 32, True, "auto-round"),
    ("llama", "llm_compressor", 4, 32, False, "compressed-tensors"),
    ("opt", "auto_round", 4, 32, False, "auto-round"),
    ("opt", "llm_compressor", 8, 32, True, "compressed-tensors"),
]


@pytest.fixture(scope="module")
def quantized(tiny_model_dir, tmp_path_factory):
    cache: dict = {}

    def get(case):
        if case not in cache:
            arch, fmt, bits, group, sym, _ = case
            cache[case] = quantize(tiny_model_dir(arch), tmp_path_factory.mktemp(arch), fmt, bits,
                                   group, sym)
        return cache[case]

    return get


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-w{c[2]}g{c[3]}")
def test_matches_library_dequantized_reference(case, quantized):
    path = quantized(case)
    qc = json.load(open(os.path.join(path, "config.json")))["quantization_config"]
    assert qc["quant_method"] == case[5]
    llm = LLM(model=path, device="cpu", max_num_batched_tokens=32, num_kv_blocks=64)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=1)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    stats = llm.stats()
    assert stats["quantization"].startswith(case[5])
    ref = reference_model(path)
    for out in outs:
        tokens, logprobs = hf_greedy(ref, out.prompt_token_ids, MAX_TOKENS)
        got = out.outputs[0]
        assert got.token_ids == tokens, out.prompt
        for entry, tok, lp in zip(got.logprobs, tokens, logprobs):
            assert abs(entry[tok] - lp) < 1e-3


def _corrupt(src: str, dst, name: str, fn) -> str:
    from safetensors.torch import load_file, save_file
    shutil.copytree(src, dst)
    f = os.path.join(dst, "model.safetensors")
    t = load_file(f)
    t[name] = fn(t[name]).contiguous()
    save_file(t, f, metadata={"format": "pt"})
    return str(dst)


def test_bad_checkpoints_fail_naming_the_tensor(quantized, tmp_path):
    path = quantized(CASES[0])
    name = "model.layers.1.mlp.down_proj.scales"
    bad = _corrupt(path, tmp_path / "scales", name, lambda s: s[:-1])
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        LLM(model=bad, device="cpu", num_kv_blocks=8)
    name = "model.layers.0.self_attn.k_proj.qweight"
    bad = _corrupt(path, tmp_path / "packing", name, lambda q: q[:, :-8])
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        LLM(model=bad, device="cpu", num_kv_blocks=8)


def test_unknown_method_fails_before_loading(tiny_model_dir, tmp_path):
    path = shutil.copytree(tiny_model_dir("llama"), tmp_path / "m")
    cfg = json.load(open(path / "config.json"))
    cfg["quantization_config"] = {"quant_method": "bitsandbytes"}
    json.dump(cfg, open(path / "config.json", "w"))
    with pytest.raises(ValueError, match="bitsandbytes.*supported methods: gptq, awq"):
        LLM(model=str(path), device="cpu")
    with pytest.raises(ValueError, match="supported methods"):
        LLM(model=tiny_model_dir("llama"), device="cpu", quantization="nf4")


@pytest.mark.parametrize("method", ["gptq", "awq", "compressed-tensors", "fp8"])
def test_dummy_quantized_weights(method, tiny_model_dir, quantized):
    """--load-format dummy --quantization <method>: random packed weights of the real shapes."""
    if method == "compressed-tensors":  # its config has no defaults: take a real one's
        llm = LLM(model=quantized(CASES[4]), device="cpu", load_format="dummy", num_kv_blocks=16)
    else:
        llm = LLM(model=tiny_model_dir("llama"), device="cpu", load_format="dummy",
                  quantization=method, num_kv_blocks=16)
    out = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True,
                                                 logprobs=0), use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == 3
    assert all(torch.isfinite(torch.tensor(e[t])) for e, t in zip(out.logprobs, out.token_ids))
    stats = llm.stats()
    assert stats["quantization"].startswith(method)
    dense = LLM(model=tiny_model_dir("llama"), device="cpu", load_format="dummy", num_kv_blocks=16)
    assert stats["weight_bytes"] < dense.stats()["weight_bytes"]
