"""The forward passes of the pooling runner: packed hidden states for a micro-batch of inputs.

`Encoder.hidden(batch)` takes token-id lists and returns `[sum(len), H]` rows, input after input.
`BertEncoderRunner` pads the batch for the bidirectional BertModel and drops the padding rows;
`DecoderEncoderRunner` runs a generation model (Llama, Qwen2, GPT-2, ...) as one causal prefill
over a scratch paged KV cache sized for that batch, through the same attention backend the
generation engine uses, and keeps nothing once the forward is done.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from engine.attention import get_attention_backend
from engine.attention.metadata import AttentionMetadata
from engine.layers.attention import attention_layers, bind_kv_caches

# Encoder architectures the pooling runner loads itself (decoders come from the main registry).
ENCODER_ARCHITECTURES = {"BertModel": ("engine.models.bert", "BertModel")}


def is_encoder(hf_config: Any) -> bool:
    archs = getattr(hf_config, "architectures", None) or []
    return bool(archs) and archs[0] in ENCODER_ARCHITECTURES


class Encoder(ABC):
    device: torch.device

    @abstractmethod
    def hidden(self, batch: list[list[int]]) -> torch.Tensor:
        """Last hidden states of every token of every input, packed: [sum(len), H]."""


def _build(cls: type, model_config: Any, device: torch.device) -> torch.nn.Module:
    from engine.loader.model_loader import (_default_dtype, _skip_random_init,
                                            init_dummy_weights, iter_weights)
    with _default_dtype(model_config.dtype), device, _skip_random_init():
        model = cls(model_config.hf_config)
    if model_config.load_format == "dummy":
        init_dummy_weights(model, model_config.seed)
    else:
        model.load_weights(iter_weights(model_config))
    return model.eval()


class BertEncoderRunner(Encoder):
    def __init__(self, model_config: Any, device: torch.device, pad_id: int = 0):
        import importlib

        module, name = ENCODER_ARCHITECTURES[model_config.architecture]
        cls = getattr(importlib.import_module(module), name)
        self.device = device
        self.pad_id = pad_id
        self.model = _build(cls, model_config, device)

    @torch.inference_mode()
    def hidden(self, batch: list[list[int]]) -> torch.Tensor:
        width = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, row in enumerate(batch):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        out = self.model(ids, mask)
        return out[mask.bool()]  # row-major: input after input, padding dropped


class DecoderEncoderRunner(Encoder):
    """A causal LM from the generation registry, prefilled once per micro-batch."""

    def __init__(self, model_config: Any, device: torch.device, block_size: int = 16,
                 attention_backend: str = "auto"):
        from engine.loader.model_loader import load_model

        self.device = device
        self.dtype = model_config.dtype
        self.block_size = block_size
        self.model = load_model(model_config, device)
        self.backend = get_attention_backend(attention_backend, device, self.dtype)
        layers = attention_layers(self.model)
        self.num_layers = len(layers)
        self.kv_shape = (layers[0].num_kv_heads, layers[0].head_dim)

    @torch.inference_mode()
    def hidden(self, batch: list[list[int]]) -> torch.Tensor:
        bs, dev = self.block_size, self.device
        lens = [len(ids) for ids in batch]
        nblocks = [-(-n // bs) for n in lens]
        total_blocks = sum(nblocks)
        caches = [(torch.empty(total_blocks, bs, *self.kv_shape, dtype=self.dtype, device=dev),
                   torch.empty(total_blocks, bs, *self.kv_shape, dtype=self.dtype, device=dev))
                  for _ in range(self.num_layers)]
        bind_kv_caches(self.model, caches, self.backend)
        # Input i owns blocks first_block[i] .. first_block[i] + nblocks[i] - 1, contiguously.
        width = max(nblocks)
        tables = torch.zeros(len(batch), width, dtype=torch.int32)
        slots, positions, first = [], [], 0
        for i, (n, nb) in enumerate(zip(lens, nblocks)):
            tables[i, :nb] = torch.arange(first, first + nb, dtype=torch.int32)
            slots.append(torch.arange(first * bs, first * bs + n))
            positions.append(torch.arange(n))
            first += nb
        qsl = torch.zeros(len(batch) + 1, dtype=torch.int32)
        qsl[1:] = torch.cumsum(torch.tensor(lens), 0)
        meta = AttentionMetadata(
            num_seqs=len(batch), num_tokens=sum(lens),
            slot_mapping=torch.cat(slots).to(dev), query_start_loc=qsl.to(dev),
            seq_lens=torch.tensor(lens, dtype=torch.int32, device=dev),
            block_tables=tables.to(dev), max_query_len=max(lens), max_seq_len=max(lens),
            query_lens_cpu=list(lens), seq_lens_cpu=list(lens))
        ids = torch.tensor([t for row in batch for t in row], dtype=torch.long, device=dev)
        try:
            return self.model(ids, torch.cat(positions).to(dev), meta)
        finally:
            for layer in attention_layers(self.model):  # the scratch cache dies with the batch
                layer.kv_cache = None
