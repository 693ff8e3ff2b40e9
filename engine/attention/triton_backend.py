"""Triton attention backend for CUDA: the kernels in `kernels/` behind the AttentionBackend protocol.

K/V of this step are scattered into the paged cache by `reshape_and_cache`. A decode-only step
(every sequence has exactly one new token, query row i belonging to sequence i) runs the split-KV
decode kernel; any step with a prefill or a chunk runs the varlen prefill kernel, which also
serves the step's decodes. Neither path synchronises with the host: lengths come from the
metadata's host-side fields.
"""
from __future__ import annotations

from typing import Optional

import torch

from engine.attention.metadata import AttentionMetadata
from gpu_kernels.paged_attention import paged_attention_decode
from gpu_kernels.prefill_attention import prefill_attention
from gpu_kernels.reshape_and_cache import reshape_and_cache


# Below this many leading decodes a mixed step stays in one prefill launch.
_MIN_DECODES_TO_SPLIT = 4


class TritonAttentionBackend:
    """AttentionBackend on Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1 for tests)."""

    name = "triton"

    def __init__(self, query_dtype: torch.dtype = torch.bfloat16):
        # The model's activation dtype: an fp8 KV cache does not say what queries look like.
        self.query_dtype = query_dtype

    def write_kv(self, key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                 value_cache: torch.Tensor, meta: AttentionMetadata) -> None:
        n = meta.slot_mapping.shape[0]
        reshape_and_cache(key[:n], value[:n], key_cache, value_cache, meta.slot_mapping)

    def attend(self, query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
               meta: AttentionMetadata, scale: float,
               sliding_window: Optional[int] = None,
               softcap: Optional[float] = None) -> torch.Tensor:
        if meta.mixed is not None:
            return self._mixed(query, key_cache, value_cache, meta, scale, sliding_window,
                               softcap)
        if meta.is_decode_only and query.shape[0] >= meta.num_seqs:
            return paged_attention_decode(query, key_cache, value_cache, meta.block_tables,
                                          meta.seq_lens, scale, meta.max_seq_len,
                                          sliding_window=sliding_window, softcap=softcap)
        q_lens = meta.query_lens_cpu
        if q_lens is not None and meta.seq_lens_cpu is not None:
            # Decodes are packed first (build_model_inputs): run them through the decode kernel
            # instead of spending a 128-row prefill tile on each single query row.
            nd = 0
            while nd < len(q_lens) and q_lens[nd] == 1:
                nd += 1
            if nd >= _MIN_DECODES_TO_SPLIT:
                return self._split(query, key_cache, value_cache, meta, scale, sliding_window, nd,
                                   softcap)
        num_real = sum(meta.query_lens_cpu) if meta.query_lens_cpu is not None else None
        return prefill_attention(query, key_cache, value_cache, meta.block_tables,
                                 meta.seq_lens, meta.query_start_loc, scale,
                                 meta.max_query_len, sliding_window=sliding_window,
                                 num_query_tokens=num_real, softcap=softcap)

    def warm_up(self, layer, max_model_len: int) -> None:
        """Compile every kernel variant a serving step can launch for `layer`'s shapes, so no
        request pays Triton's JIT: decode without and with splits, and each prefill tile
        configuration (query lengths 16, 64, and longer). Reads the layer's bound cache only;
        nothing is written."""
        key_cache, value_cache = layer.kv_cache
        dev = key_cache.device
        dtype = key_cache.dtype if key_cache.element_size() > 1 else self.query_dtype
        block_size = key_cache.shape[1]
        ctx = min(max_model_len, 2048)
        nblocks = min(-(-ctx // block_size), key_cache.shape[0])
        ctx = min(ctx, nblocks * block_size)
        table = torch.arange(nblocks, dtype=torch.int32, device=dev)[None]
        window = layer.sliding_window
        cap = getattr(layer, "logit_softcap", None)
        q1 = torch.zeros(1, layer.num_heads, layer.head_dim, dtype=dtype, device=dev)
        seq_lens = torch.tensor([ctx], dtype=torch.int32, device=dev)
        for splits in (1, 2):
            paged_attention_decode(q1, key_cache, value_cache, table, seq_lens, layer.scale, ctx,
                                   sliding_window=window, num_splits=splits, softcap=cap)
        for q_len in (16, 64, min(128, ctx)):
            q = torch.zeros(q_len, layer.num_heads, layer.head_dim, dtype=dtype, device=dev)
            qsl = torch.tensor([0, q_len], dtype=torch.int32, device=dev)
            prefill_attention(q, key_cache, value_cache, table, seq_lens, qsl, layer.scale, q_len,
                              sliding_window=window, num_query_tokens=q_len, softcap=cap)

    @staticmethod
    def _mixed(query, key_cache, value_cache, meta: AttentionMetadata, scale: float,
               sliding_window: Optional[int], softcap: Optional[float] = None) -> torch.Tensor:
        """A graph-captured mixed step (MixedLayout): the decode kernel over every row (zeros
        where `seq_lens` is 0), then the prefill kernel over its slots, overwriting their rows.
        Grids are sized from the row count and `max_seq_len` (the model's limit), host
        constants at capture."""
        m = meta.mixed
        t = query.shape[0]
        out = paged_attention_decode(query, key_cache, value_cache, meta.block_tables[:t],
                                     meta.seq_lens[:t], scale, meta.max_seq_len,
                                     sliding_window=sliding_window, softcap=softcap)
        return prefill_attention(query, key_cache, value_cache, m.prefill_block_tables,
                                 m.prefill_seq_lens, m.prefill_query_start_loc, scale, t,
                                 sliding_window=sliding_window, out=out, num_query_tokens=t,
                                 softcap=softcap)

    @staticmethod
    def _split(query, key_cache, value_cache, meta: AttentionMetadata, scale: float,
               sliding_window: Optional[int], nd: int,
               softcap: Optional[float] = None) -> torch.Tensor:
        """Sequences [0, nd) have one query row each; the rest are prefills or chunks."""
        out = torch.empty_like(query)
        paged_attention_decode(query[:nd], key_cache, value_cache, meta.block_tables[:nd],
                               meta.seq_lens[:nd], scale, max(meta.seq_lens_cpu[:nd]),
                               sliding_window=sliding_window, out=out[:nd], softcap=softcap)
        rest = meta.query_lens_cpu[nd:]
        prefill_attention(query[nd:], key_cache, value_cache, meta.block_tables[nd:],
                          meta.seq_lens[nd:], meta.query_start_loc[nd:] - nd, scale, max(rest),
                          sliding_window=sliding_window, out=out[nd:],
                          num_query_tokens=sum(rest), softcap=softcap)
        return out
