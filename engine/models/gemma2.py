"""Gemma 2 text models (Gemma2ForCausalLM), HF module names.

Gemma 2 is Gemma 3's layer layout (see engine/models/gemma3.py, which builds both) minus the
per-head q/k norms, with one RoPE base for every layer, local sliding-window layers alternating
with global ones, attention scores soft-capped (`attn_logit_softcapping`, inside the attention
kernels and their torch reference) and final logits soft-capped (`final_logit_softcapping`).
"""
from __future__ import annotations

from engine.models.gemma3 import Gemma3ForCausalLM


class Gemma2ForCausalLM(Gemma3ForCausalLM):
    """Gemma 2 causal LM; its config's model_type ("gemma2") selects the differences."""
