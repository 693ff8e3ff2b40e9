"""Shared fixtures: tiny random-weight models per architecture and the default model, built or
loaded once per test session."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Without CUDA every Triton kernel runs through the CPU interpreter. TRITON_INTERPRET is read when
# a kernel is decorated, so it is set here, before any test module (or the engine code it imports)
# imports a kernel: a kernel decorated in the other mode cannot call the interpreted helpers.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover - torch is a hard dependency
    pass
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """`tiny_model_dir(arch, **config_overrides)` -> folder with a tiny HF checkpoint + tokenizer."""
    from tests.fixtures_models import make_tiny_model

    cache: dict = {}

    def get(arch: str, **overrides):
        key = (arch, repr(sorted(overrides.items())))  # values may be dicts
        if key not in cache:
            path = tmp_path_factory.mktemp(f"tiny_{arch}")
            cache[key] = make_tiny_model(arch, path, **overrides)
        return str(cache[key])

    return get


@pytest.fixture(scope="session")
def default_llm():
    """The default model (SmolLM2-135M-Instruct GGUF), fp32 on the CPU, loaded once."""
    from engine import LLM

    return LLM(device="cpu")


@pytest.fixture(scope="session")
def hf_default_model():
    """transformers' own load of the same GGUF: the reference for the default model."""
    from transformers import AutoModelForCausalLM

    from engine.loader.default_model import default_model_path
    from engine.loader.gguf_hf_parse import reused_gguf_parse

    path = default_model_path()
    with reused_gguf_parse():  # the config's metadata parse is shared; the weights are HF's own
        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path),
                                                     gguf_file=os.path.basename(path))
    return model.eval()
