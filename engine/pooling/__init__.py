"""Pooling runner: embeddings from encoder (BERT family) and decoder models.

`PoolingEngine` tokenizes inputs, runs them through an `Encoder` in token-budget micro-batches and
pools each input's hidden states into one vector (`Pooler`). It shares nothing with the generation
engine's scheduler or model runner: an embedding request is one forward, no KV cache survives it.
"""
from engine.pooling.engine import EmbeddingOutput, PoolingEngine
from engine.pooling.pooler import Pooler, PoolingConfig

__all__ = ["EmbeddingOutput", "PoolingEngine", "Pooler", "PoolingConfig"]
