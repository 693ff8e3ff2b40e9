"""Read GGUF weights (`gguf_file.GGUFFile`) and yield them under Hugging Face names.

Quantized tensors (Q4_0, Q4_1, Q8_0, K-quants, ...) are dequantized to float32 by
`gguf.quants.dequantize`. GGUF lists dimensions fastest-first, so a tensor of GGUF shape `[in, out]`
is the row-major `[out, in]` matrix HF uses. llama.cpp's converter permutes the rows of Llama's
q/k projections (per head, from HF's rotate-half pairing to interleaved pairs); we undo that so the
weights work with neox-style RoPE as in transformers. Gemma 3 files name their extra norms
differently (`ffn_norm` is the pre-feedforward norm there) and store every norm weight as `1 + w`;
we map the names and subtract the one again, as transformers does.
"""
from __future__ import annotations

import re
from typing import Iterator

import numpy as np
import torch

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Per-architecture differences from the Llama names above.
_ARCH_BLOCK_NAMES = {
    "gemma3": {
        "ffn_norm": "pre_feedforward_layernorm",
        "post_attention_norm": "post_attention_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
    },
}
# Architectures whose converter stores RMSNorm weights as 1 + w.
_NORM_PLUS_ONE_ARCHS = ("gemma3",)
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
# Architectures whose converter applies the q/k permutation.
_PERMUTED_ARCHS = ("llama", "mistral")
# Tensors that carry nothing our models need (RoPE frequency factors come from the config).
_SKIPPED = ("rope_freqs.weight",)


def gguf_to_hf_name(name: str, arch: str = "llama") -> str:
    """llama.cpp tensor name -> HF parameter name; ValueError for names we do not map."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _BLOCK_RE.match(name)
    names = {**_BLOCK_NAMES, **_ARCH_BLOCK_NAMES.get(arch, {})}
    if m is None or m.group(2) not in names:
        raise ValueError(f"GGUF tensor '{name}' has no Hugging Face equivalent for '{arch}'")
    return f"model.layers.{m.group(1)}.{names[m.group(2)]}.{m.group(3)}"


def unpermute_qk(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Invert llama.cpp's per-head row permutation of a q/k weight [n_heads*head_dim, ...] or bias.

    The converter maps head rows (2, head_dim/2) -> (head_dim/2, 2); this maps them back.
    """
    rest = t.shape[1:]
    half = t.shape[0] // n_heads // 2
    return t.reshape(n_heads, half, 2, *rest).transpose(1, 2).reshape(t.shape)


def gguf_weights(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF name, float32 tensor) for every weight of a Llama-family or Gemma 3 GGUF file."""
    from gguf.quants import dequantize

    from engine.loader.gguf_file import GGUFFile

    gguf = GGUFFile(path)
    meta = gguf.metadata
    arch = meta["general.architecture"]
    n_head = meta.get(f"{arch}.attention.head_count")
    n_kv = meta.get(f"{arch}.attention.head_count_kv", n_head)
    permuted = arch in _PERMUTED_ARCHS
    for tensor in gguf.tensors:
        if tensor.name in _SKIPPED:
            continue
        hf_name = gguf_to_hf_name(tensor.name, arch)
        array = dequantize(tensor.data, tensor.tensor_type)
        # Reversed GGUF dims are the row-major shape; np.array copies out of the read-only mmap.
        shape = tuple(reversed(tensor.shape))
        weight = torch.from_numpy(np.array(array, dtype=np.float32).reshape(shape))
        if permuted and ".q_proj." in hf_name:
            weight = unpermute_qk(weight, n_head)
        elif permuted and ".k_proj." in hf_name:
            weight = unpermute_qk(weight, n_kv)
        elif arch in _NORM_PLUS_ONE_ARCHS and hf_name.endswith("norm.weight"):
            weight = weight - 1
        yield hf_name, weight
