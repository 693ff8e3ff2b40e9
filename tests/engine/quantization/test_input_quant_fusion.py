"""Input-quantization fusion (engine/quantization/input_quant.py): with a W8A8 scheme whose
activations are quantized per token, the loader wires each Llama layer's input_layernorm,
post_attention_layernorm and SiLU-and-mul to emit the quantized input of qkv_proj, gate_up_proj
and down_proj. Wired or not, the engine's greedy tokens and logprobs are the same bits; schemes
without dynamic per-token inputs (static FP8, block FP8, unquantized, ignored layers) stay
unwired."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from engine import LLM, SamplingParams
from engine.layers.activation import SiluAndMul
from engine.layers.layernorm import RMSNorm, rms_norm_quantized
from engine.models.llama import LlamaDecoderLayer
from engine.quantization.input_quant import (InputQuant, QuantizedInput, quantize_input,
                                             wire_input_quant)

PROMPTS = ["Hello world", "The quick brown fox jumps over the lazy dog"]
PARAMS = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=3)
INT8_CT = {"quant_method": "compressed-tensors", "format": "int-quantized", "config_groups": {
    "group_0": {"targets": ["Linear"], "format": "int-quantized",
                "weights": {"type": "int", "num_bits": 8, "symmetric": True,
                            "strategy": "channel"},
                "input_activations": {"type": "int", "num_bits": 8, "symmetric": True,
                                      "dynamic": True, "strategy": "token"}}},
    "ignore": ["lm_head"]}


def _checkpoint(src: str, dst, quantization_config: dict) -> str:
    """A copy of the tiny checkpoint's folder whose config declares `quantization_config` (the
    weights are random: load_format="dummy")."""
    shutil.copytree(src, dst)
    with open(dst / "config.json") as f:
        config = json.load(f)
    config["quantization_config"] = quantization_config
    with open(dst / "config.json", "w") as f:
        json.dump(config, f)
    return str(dst)


def _model(llm: LLM) -> torch.nn.Module:
    return llm.llm_engine.core.runner.model


def _wiring(model: torch.nn.Module) -> list[tuple]:
    """Per layer: the output_quant of its three producers."""
    return [(layer.input_layernorm.output_quant, layer.post_attention_layernorm.output_quant,
             layer.mlp.act_fn.output_quant)
            for layer in model.modules() if isinstance(layer, LlamaDecoderLayer)]


def _generate(llm: LLM) -> list:
    return [(o.outputs[0].token_ids, o.outputs[0].logprobs)
            for o in llm.generate(PROMPTS, PARAMS, use_tqdm=False)]


def _unwire(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, (RMSNorm, SiluAndMul)):
            module.output_quant = None


@pytest.mark.parametrize("name,config,dtype,kind", [
    ("fp8-at-load", None, "float32", "fp8"),
    ("fp8-at-load-bf16", None, "bfloat16", "fp8"),
    ("fp8-dynamic-checkpoint", {"quant_method": "fp8", "activation_scheme": "dynamic"},
     "float32", "fp8"),
    ("int8-w8a8", INT8_CT, "float32", "int8"),
    ("int8-w8a8-bf16", INT8_CT, "bfloat16", "int8"),
])
def test_fused_equals_unfused(name, config, dtype, kind, tiny_model_dir, tmp_path):
    path = tiny_model_dir("llama")
    if config is None:
        llm = LLM(model=path, device="cpu", dtype=dtype, quantization="fp8", num_kv_blocks=64)
    else:
        llm = LLM(model=_checkpoint(path, tmp_path / "ckpt", config), device="cpu", dtype=dtype,
                  load_format="dummy", num_kv_blocks=64)
    model = _model(llm)
    wiring = _wiring(model)
    assert len(wiring) == 2 and wiring == [(InputQuant(kind),) * 3] * 2
    seen: list[type] = []  # what the wired linears receive: the producers' quantized inputs
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append(type(args[0])))
             for layer in model.modules() if isinstance(layer, LlamaDecoderLayer)
             for m in (layer.self_attn.qkv_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj)]
    fused = _generate(llm)
    for h in hooks:
        h.remove()
    assert seen and set(seen) == {QuantizedInput}
    _unwire(model)
    unfused = _generate(llm)
    assert fused == unfused  # token ids and logprobs, exactly
    wire_input_quant(model)
    assert _wiring(model) == wiring and _generate(llm) == fused


@pytest.mark.parametrize("name,config", [
    ("unquantized", None),
    ("fp8-static", {"quant_method": "fp8", "activation_scheme": "static"}),
    ("fp8-block", {"quant_method": "fp8", "activation_scheme": "dynamic",
                   "weight_block_size": [16, 16]}),
])
def test_not_wired_without_dynamic_per_token_inputs(name, config, tiny_model_dir, tmp_path):
    path = tiny_model_dir("llama")
    if config is not None:
        path = _checkpoint(path, tmp_path / "ckpt", config)
    llm = LLM(model=path, device="cpu", load_format="dummy", num_kv_blocks=64)
    assert _wiring(_model(llm)) == [(None, None, None)] * 2
    assert len(_generate(llm)) == len(PROMPTS)


def test_ignored_consumer_leaves_its_producer_unwired(tiny_model_dir, tmp_path):
    config = dict(INT8_CT, ignore=["lm_head", "re:.*down_proj"])
    llm = LLM(model=_checkpoint(tiny_model_dir("llama"), tmp_path / "ckpt", config),
              device="cpu", load_format="dummy", num_kv_blocks=64)
    int8 = InputQuant("int8")
    assert _wiring(_model(llm)) == [(int8, int8, None)] * 2
    fused = _generate(llm)
    _unwire(_model(llm))
    assert _generate(llm) == fused


def test_producer_paths_equal_unfused():
    """The layers' own functions: quantized output == quantize_input(unfused output), and the
    residual stream is unchanged (CPU path; the CUDA kernels are compared in tests/kernels)."""
    x, res, w = torch.randn(3, 5, 32), torch.randn(3, 5, 32), torch.randn(32)
    spec = InputQuant("fp8")
    qi, new_res = rms_norm_quantized(x, w, 1e-5, spec, res)
    norm = RMSNorm(32, 1e-5)
    norm.weight.data.copy_(w)
    out, want_res = norm(x, res)
    want = quantize_input(out, spec)
    assert qi.lead_shape == (3, 5) and qi.dtype == torch.float32 and qi.q.shape == (15, 32)
    assert torch.equal(qi.q.view(torch.uint8), want.q.view(torch.uint8))
    assert torch.equal(qi.scale, want.scale) and torch.equal(new_res, want_res)
    act = SiluAndMul()
    act.output_quant = InputQuant("int8")
    g = torch.randn(4, 64, dtype=torch.bfloat16)
    qa = act(g)
    act.output_quant = None
    want = quantize_input(act(g), InputQuant("int8"))
    assert torch.equal(qa.q, want.q) and torch.equal(qa.scale, want.scale)
    with pytest.raises(ValueError, match="kind"):
        InputQuant("int4")


@pytest.mark.gpu
@pytest.mark.parametrize("config,dtype", [(None, "bfloat16"), (None, "float16"),
                                          (INT8_CT, "bfloat16"), (INT8_CT, "float16")])
def test_fused_kernels_equal_unfused_gpu(config, dtype, tiny_model_dir, tmp_path, monkeypatch):
    """On CUDA the producers run the fused kernels (with CUDA graphs): the same tokens and
    logprobs as an engine whose loader does not wire them (unfused norm / activation kernels,
    then the quantization kernel in the linear)."""
    from tests.fixtures_models import make_tiny_model
    # head size 64: the GPU attention kernels take 64, 80, 96, 128 or 256
    path = str(make_tiny_model("llama", tmp_path / "model", hidden_size=256,
                               num_attention_heads=4, head_dim=64))
    kw = dict(dtype=dtype, num_kv_blocks=64)
    if config is None:
        kw["quantization"] = "fp8"
    else:
        path, kw["load_format"] = _checkpoint(path, tmp_path / "ckpt", config), "dummy"
    fused_llm = LLM(model=path, **kw)
    assert all(w[0] is not None for w in _wiring(_model(fused_llm)))
    fused = _generate(fused_llm)
    del fused_llm
    monkeypatch.setattr("engine.loader.model_loader.wire_input_quant", lambda model: None)
    unfused_llm = LLM(model=path, **kw)
    assert _wiring(_model(unfused_llm)) == [(None, None, None)] * 2
    assert _generate(unfused_llm) == fused


def test_eagle3_on_a_wired_target(tiny_model_dir, tmp_path):
    """An FP8 target (wired) with an EAGLE-3 head (unquantized: nothing wired): the auxiliary
    residual streams are unaffected, greedy outputs equal the target's without speculation."""
    from tests.engine.spec_decode.test_spec_eagle3 import _eagle3, _random_head
    target = tiny_model_dir("llama")
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    ref = LLM(model=target, device="cpu", quantization="fp8", num_kv_blocks=64)
    want = [o.outputs[0].token_ids for o in ref.generate(PROMPTS, params, use_tqdm=False)]
    llm = LLM(model=target, device="cpu", quantization="fp8", num_kv_blocks=64,
              speculative_config=_eagle3(_random_head(tmp_path / "head")))
    assert _wiring(_model(llm)) == [(InputQuant("fp8"),) * 3] * 2
    head = llm.llm_engine.core.speculator.proposer.head
    assert not [m for m in head.modules() if getattr(m, "output_quant", None) is not None]
    got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params, use_tqdm=False)]
    assert got == want and llm.stats()["spec_decode_num_draft_tokens"] > 0
