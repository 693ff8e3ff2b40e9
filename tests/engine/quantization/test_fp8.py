"""FP8 W8A8 quantized at load (`quantization="fp8"`): the CPU path equals transformers with every
linear's weight rounded per channel and its input per token through torch's own e4m3 cast."""
from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from tests.engine.test_llm_vs_hf import hf_greedy
from tests.fixtures_models import load_hf_model

PROMPTS = ["Hello world", "The quick brown fox jumps over the lazy dog"]
MAX_TOKENS = 8
E4M3 = torch.float8_e4m3fn


def _fp8_round_rows(t: torch.Tensor) -> torch.Tensor:
    scale = (t.abs().amax(-1, keepdim=True) / torch.finfo(E4M3).max).clamp(min=1e-12)
    return (t / scale).clamp(-448, 448).to(E4M3).float() * scale


def fp8_reference(path: str, skip: tuple[str, ...]):
    model = load_hf_model(path)
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and not name.endswith(skip):
            with torch.no_grad():
                mod.weight.copy_(_fp8_round_rows(mod.weight))
            mod.register_forward_pre_hook(
                lambda m, args: (_fp8_round_rows(args[0].reshape(-1, args[0].shape[-1]))
                                 .reshape(args[0].shape),))
    return model


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_fp8_dynamic_matches_emulated_reference(arch, tiny_model_dir):
    path = tiny_model_dir(arch)
    llm = LLM(model=path, device="cpu", quantization="fp8", num_kv_blocks=64)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=1)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)
    stats = llm.stats()
    assert stats["quantization"].startswith("fp8")
    ref = fp8_reference(path, skip=("lm_head", "embed_out"))
    for out in outs:
        tokens, logprobs = hf_greedy(ref, out.prompt_token_ids, MAX_TOKENS)
        assert out.outputs[0].token_ids == tokens
        for entry, tok, lp in zip(out.outputs[0].logprobs, tokens, logprobs):
            assert abs(entry[tok] - lp) < 1e-3


def test_fp8_checkpoint_config_rejected(tiny_model_dir, tmp_path):
    import json
    import shutil
    path = shutil.copytree(tiny_model_dir("llama"), tmp_path / "m")
    cfg = json.load(open(path / "config.json"))
    cfg["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    json.dump(cfg, open(path / "config.json", "w"))
    with pytest.raises(ValueError, match="pre-quantized FP8 checkpoints"):
        LLM(model=str(path), device="cpu")


@pytest.mark.gpu
def test_fp8_gpu_close_to_bf16(tiny_model_dir):
    path = tiny_model_dir("llama")
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    fp8 = LLM(model=path, quantization="fp8", num_kv_blocks=64).generate(PROMPTS, params,
                                                                         use_tqdm=False)
    ref = LLM(model=path, dtype="float32", device="cpu", quantization="fp8",
              num_kv_blocks=64).generate(PROMPTS, params, use_tqdm=False)
    agree = sum(a.outputs[0].token_ids[0] == b.outputs[0].token_ids[0] for a, b in zip(fp8, ref))
    assert agree == len(PROMPTS)
