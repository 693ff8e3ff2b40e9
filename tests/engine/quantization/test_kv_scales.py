"""FP8 KV-cache scales read from the checkpoint (engine/quantization/kv_cache.py).

A tiny Llama whose k_proj / v_proj weights are shrunk 1000x has keys and values around 1e-3:
below e4m3's normal range (2^-6), where an unscaled fp8 cache keeps one or two bits or none.
With `self_attn.k_scale` / `v_scale` = 1e-3 in the checkpoint the fp8 cache stores K/1e-3, V/1e-3
(back in e4m3's comfortable range) and the model's prompt logprobs stay close to a full-precision
KV cache; without them they drift far. Scales are checked at load (one positive finite number
per tensor, naming the tensor otherwise) and `kv_scale` sets both.
"""
from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine import LLM, SamplingParams
from engine.layers.attention import attention_layers

PROMPTS = [f"Request number {i} says: " + "word " * (3 + 5 * i) for i in range(4)]
SHRINK = 1e-3


def _checkpoint(src: str, dst, scales: dict[str, float]) -> str:
    shutil.copytree(src, dst)
    (path,) = list(dst.glob("*.safetensors"))
    weights = load_file(str(path))
    for name in list(weights):
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            weights[name] = weights[name] * SHRINK
    num_layers = 1 + max(int(n.split(".")[2]) for n in weights if ".layers." in n)
    for layer in range(num_layers):
        for suffix, value in scales.items():
            weights[f"model.layers.{layer}.self_attn.{suffix}"] = torch.tensor(value)
    save_file(weights, str(path), metadata={"format": "pt"})
    return str(dst)


def _prompt_logprobs(path: str, **kw) -> list[float]:
    llm = LLM(model=path, device="cpu", **kw)
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    return [e[t] for o in outs for t, e in zip(o.prompt_token_ids[1:], o.prompt_logprobs[1:])]


def _worst(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def checkpoints(tiny_model_dir, tmp_path_factory):
    src = tiny_model_dir("llama")
    root = tmp_path_factory.mktemp("kv_scales")
    scaled = _checkpoint(src, root / "scaled", {"k_scale": SHRINK, "v_scale": SHRINK})
    plain = _checkpoint(src, root / "plain", {})
    return scaled, plain


def test_scales_from_the_checkpoint_keep_fp8_close_to_full_precision(checkpoints):
    scaled, plain = checkpoints
    llm = LLM(model=scaled, device="cpu", kv_cache_dtype="fp8")
    layers = attention_layers(llm.llm_engine.core.runner.model)
    assert all(layer.k_scale == pytest.approx(SHRINK) and layer.v_scale == pytest.approx(SHRINK)
               for layer in layers)
    full = _prompt_logprobs(scaled)  # bf16/fp32 caches ignore the scales: exact K/V
    assert _worst(full, _prompt_logprobs(plain)) < 1e-4
    with_scales = _worst(full, _prompt_logprobs(scaled, kv_cache_dtype="fp8"))
    without = _worst(full, _prompt_logprobs(plain, kv_cache_dtype="fp8"))
    print(f"worst prompt logprob difference to a full-precision KV cache: {with_scales:.4f} "
          f"with the checkpoint's scales, {without:.4f} without")
    assert with_scales < 0.3
    assert without > 5 * with_scales


def test_kv_scale_sets_both_and_bad_scales_name_the_tensor(tiny_model_dir, tmp_path):
    src = tiny_model_dir("llama")
    both = _checkpoint(src, tmp_path / "both", {"kv_scale": 0.5})
    llm = LLM(model=both, device="cpu", kv_cache_dtype="fp8")
    layers = attention_layers(llm.llm_engine.core.runner.model)
    assert all(layer.k_scale == 0.5 and layer.v_scale == 0.5 for layer in layers)
    bad = _checkpoint(src, tmp_path / "bad", {"k_scale": -1.0})
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.k_scale: .*positive"):
        LLM(model=bad, device="cpu", kv_cache_dtype="fp8")
