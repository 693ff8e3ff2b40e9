"""Attention backends: how the model's Attention layer writes and reads the paged KV cache."""
from engine.attention.backend import AttentionBackend, TorchAttentionBackend, get_attention_backend
from engine.attention.metadata import AttentionMetadata

__all__ = ["AttentionBackend", "TorchAttentionBackend", "get_attention_backend", "AttentionMetadata"]
