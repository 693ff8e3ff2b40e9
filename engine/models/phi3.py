"""Phi-3 / Phi-3.5-mini (Phi3ForCausalLM): a Llama-style decoder whose checkpoints already fuse
`qkv_proj` and `gate_up_proj`, with LongRoPE ("longrope", formerly "su") short/long factors and
an optional partial rotary factor (engine/layers/rotary.py). A configured `sliding_window`
applies to every layer, as in HF. Quantized checkpoints name the fused modules (`qkv_proj`,
`gate_up_proj`); their tensors are split into the fused layers' shards at load
(engine/models/stacked_loading.py), packed layouts included."""
from __future__ import annotations

from engine.models.qwen3 import Qwen3ForCausalLM


class Phi3ForCausalLM(Qwen3ForCausalLM):
    qk_norm = False
    stacked_params: dict[str, tuple[str, int]] = {}  # checkpoint names are ours already
    checkpoint_fused = True
