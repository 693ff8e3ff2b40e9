"""Attention backends. Both write new K/V by slot mapping, then attend through the block table.

`TorchAttentionBackend` uses the pure-torch references in `kernels/` (CPU, and the ground truth
for tests); `TritonAttentionBackend` (engine/attention/triton_backend.py) uses the Triton kernels
on CUDA. The runner picks one per engine and binds it to every Attention layer.
"""
from __future__ import annotations

from typing import Optional, Protocol

import torch

from engine.attention.metadata import AttentionMetadata
from gpu_kernels.paged_attention_ref import paged_attention_ref
from gpu_kernels.reshape_and_cache_ref import reshape_and_cache_ref


class AttentionBackend(Protocol):
    name: str

    def write_kv(self, key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                 value_cache: torch.Tensor, meta: AttentionMetadata) -> None: ...

    def attend(self, query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
               meta: AttentionMetadata, scale: float,
               sliding_window: Optional[int] = None,
               softcap: Optional[float] = None) -> torch.Tensor: ...

    def warm_up(self, layer, max_model_len: int) -> None:
        """Prepare (e.g. compile) whatever `layer`'s steps will run, before serving."""


class TorchAttentionBackend:
    """Reference path: correct on every device, fast enough for the CPU."""

    name = "torch"

    def write_kv(self, key, value, key_cache, value_cache, meta):
        reshape_and_cache_ref(key, value, key_cache, value_cache, meta.slot_mapping)

    def attend(self, query, key_cache, value_cache, meta, scale, sliding_window=None,
               softcap=None):
        return paged_attention_ref(query, key_cache, value_cache, meta.block_tables,
                                   meta.seq_lens, meta.query_start_loc, scale,
                                   sliding_window=sliding_window,
                                   query_lens_cpu=meta.query_lens_cpu,
                                   seq_lens_cpu=meta.seq_lens_cpu, softcap=softcap)

    def warm_up(self, layer, max_model_len: int) -> None:
        pass  # plain torch ops: nothing to compile


def get_attention_backend(choice: str, device: torch.device,
                          dtype: torch.dtype = torch.bfloat16) -> AttentionBackend:
    """'auto' is Triton on CUDA for fp16/bf16, torch elsewhere.

    fp32 stays on the torch path even on CUDA: Triton's dot runs fp32 as tf32, and fp32 is the
    mode users pick for exactness.
    """
    if choice == "auto":
        half = dtype in (torch.float16, torch.bfloat16)
        choice = "triton" if device.type == "cuda" and half else "torch"
    if choice == "torch":
        return TorchAttentionBackend()
    if choice == "triton":
        from engine.attention.triton_backend import TritonAttentionBackend
        return TritonAttentionBackend(dtype)
    raise ValueError(f"attention_backend: unknown backend '{choice}'")
