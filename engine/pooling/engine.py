"""`PoolingEngine`: inputs (text or token ids) -> one embedding vector each.

Inputs are tokenized like sentence-transformers does (the tokenizer's special tokens), checked
against the context length (an over-long input is a ValueError naming it, never truncated
silently), grouped into micro-batches of at most `max_num_batched_tokens` tokens, run through
the model's `Encoder` and pooled. Thread-safe for one caller at a time (the server serialises).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch

from engine.config import ModelConfig, max_len_from_hf_config, resolve_device, resolve_dtype
from engine.pooling.encoders import (BertEncoderRunner, DecoderEncoderRunner, Encoder,
                                     is_encoder)
from engine.pooling.pooler import Pooler, pooling_config_for

Input = Union[str, Sequence[int]]


@dataclass
class EmbeddingOutput:
    """vLLM's shape: `output.outputs.embedding`, plus the input's token count."""

    embedding: list[float]
    num_prompt_tokens: int


@dataclass
class EmbeddingRequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: EmbeddingOutput
    finished: bool = True


class PoolingEngine:
    """Options are `EngineArgs` names: model, tokenizer, dtype, device, max_model_len,
    max_num_batched_tokens, load_format, trust_remote_code, hf_overrides, seed, block_size,
    attention_backend, served_model_name."""

    def __init__(self, model: Optional[str] = None, tokenizer: Optional[str] = None,
                 dtype: str = "auto", device: str = "auto", max_model_len: Optional[int] = None,
                 max_num_batched_tokens: Optional[int] = None, load_format: str = "auto",
                 trust_remote_code: bool = False, hf_overrides: Optional[dict] = None,
                 seed: int = 0, block_size: int = 16, attention_backend: str = "auto",
                 served_model_name: Optional[str] = None):
        from engine.loader.resolve import resolve_model
        from engine.loader.tokenizer import get_tokenizer

        dev = resolve_device(device)
        resolved = resolve_model(model, tokenizer, load_format, trust_remote_code, hf_overrides)
        hf = resolved.hf_config
        encoder = is_encoder(hf)
        if not encoder:
            from engine.models.registry import get_model_class
            get_model_class(hf)  # unsupported architectures fail here, naming themselves
        folder = None if resolved.gguf_file else resolved.tokenizer
        limit = max_len_from_hf_config(hf)
        st_len = _sentence_transformers_max_len(folder)
        if st_len is not None:
            limit = min(limit, st_len)
        if max_model_len is not None:
            if not 1 <= max_model_len <= max_len_from_hf_config(hf):
                raise ValueError(f"max_model_len: must be in [1, {max_len_from_hf_config(hf)}]")
            limit = max_model_len
        self.model_config = ModelConfig(
            model=resolved.model, tokenizer=resolved.tokenizer, hf_config=hf,
            dtype=resolve_dtype(dtype, dev), max_model_len=limit,
            load_format=resolved.load_format, gguf_file=resolved.gguf_file,
            trust_remote_code=trust_remote_code, seed=seed, served_model_name=served_model_name)
        self.device = dev
        self.max_num_batched_tokens = max_num_batched_tokens or (16384 if dev.type == "cuda"
                                                                 else 4096)
        if self.max_num_batched_tokens < limit:
            raise ValueError(f"max_num_batched_tokens: must be >= max_model_len ({limit})")
        self.tokenizer = get_tokenizer(self.model_config)
        self.pooling = pooling_config_for(folder, hf, encoder)
        self.pooler = Pooler(self.pooling)
        self.encoder: Encoder
        if encoder:
            pad = self.tokenizer.pad_token_id
            self.encoder = BertEncoderRunner(self.model_config, dev, 0 if pad is None else pad)
        else:
            self.encoder = DecoderEncoderRunner(self.model_config, dev, block_size,
                                                attention_backend)

    @property
    def hidden_size(self) -> int:
        return self.pooling.hidden_size

    def tokenize(self, item: Input, index: int = 0, field: str = "input") -> list[int]:
        """Token ids of one input; ValueError naming `field` if empty, bad or too long."""
        if isinstance(item, str):
            ids = list(self.tokenizer.encode(item, add_special_tokens=True))
        else:
            ids = [int(t) for t in item]
            vocab = int(self.model_config.hf_config.vocab_size)
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"{field}[{index}]: token ids outside the vocabulary "
                                 f"(size {vocab}): {bad[:5]}")
        if not ids:
            raise ValueError(f"{field}[{index}]: empty input")
        if len(ids) > self.model_config.max_model_len:
            raise ValueError(f"{field}[{index}]: {len(ids)} tokens exceed the model's maximum "
                             f"context of {self.model_config.max_model_len} tokens")
        return ids

    def embed_token_ids(self, inputs: list[list[int]],
                        dimensions: Optional[int] = None) -> torch.Tensor:
        """[len(inputs), dimensions or hidden] float32, in input order."""
        self.pooling.check_dimensions(dimensions)
        # Longest first keeps padding small within each micro-batch; results return in order.
        order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
        out = torch.empty(len(inputs), dimensions or self.hidden_size)
        batch: list[int] = []
        tokens = 0

        def flush() -> None:
            rows = [inputs[i] for i in batch]
            pooled = self.pooler(self.encoder.hidden(rows), [len(r) for r in rows], dimensions)
            out[batch] = pooled.cpu()

        for i in order:
            n = len(inputs[i])
            if batch and tokens + n > self.max_num_batched_tokens:
                flush()
                batch, tokens = [], 0
            batch.append(i)
            tokens += n
        if batch:
            flush()
        return out

    def embed(self, prompts: Union[Input, Sequence[Input]],
              dimensions: Optional[int] = None) -> list[EmbeddingRequestOutput]:
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        ids = [self.tokenize(p, i, "prompts") for i, p in enumerate(prompts)]
        vecs = self.embed_token_ids(ids, dimensions)
        return [EmbeddingRequestOutput(request_id=str(i), prompt_token_ids=row,
                                       outputs=EmbeddingOutput(vecs[i].tolist(), len(row)))
                for i, row in enumerate(ids)]


def _sentence_transformers_max_len(folder: Optional[str]) -> Optional[int]:
    path = os.path.join(folder, "sentence_bert_config.json") if folder else None
    if not path or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        value = json.load(fh).get("max_seq_length")
    return int(value) if value else None
