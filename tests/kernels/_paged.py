"""Helpers for kernel tests: paged KV caches with scattered and shared blocks, error measure."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PagedCase:
    query: torch.Tensor  # [T, H, D]
    key_cache: torch.Tensor  # [NB, BS, KVH, D]
    value_cache: torch.Tensor
    block_tables: torch.Tensor  # [S, max_blocks] int32, padded with 0
    seq_lens: torch.Tensor  # [S] int32
    query_start_loc: torch.Tensor  # [S + 1] int32
    query_lens: list[int]
    seq_lens_list: list[int]


def make_paged_case(seq_lens: list[int], query_lens: list[int], heads: int, kv_heads: int,
                    head_dim: int, block_size: int, dtype: torch.dtype, device: str,
                    share_prefix: bool = True) -> PagedCase:
    """Random caches; each sequence's blocks are a random, non-contiguous choice of block ids.

    With `share_prefix`, sequence 1 reuses sequence 0's first full block (a prefix-cache hit),
    so two block-table rows name the same physical block.
    """
    need = [(s + block_size - 1) // block_size for s in seq_lens]
    num_blocks = sum(need) + 3  # spare blocks stay random: reading one would show up as error
    perm = torch.randperm(num_blocks).tolist()
    max_blocks = max(need) + 2  # extra zero padding columns, as the runner pads
    tables = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32)
    pos = 0
    for i, n in enumerate(need):
        tables[i, :n] = torch.tensor(perm[pos:pos + n], dtype=torch.int32)
        pos += n
    if share_prefix and len(seq_lens) > 1 and min(seq_lens[0], seq_lens[1]) > block_size:
        tables[1, 0] = tables[0, 0]
    shape = (num_blocks, block_size, kv_heads, head_dim)
    key_cache = torch.randn(shape, dtype=dtype, device=device)
    value_cache = torch.randn(shape, dtype=dtype, device=device)
    total = sum(query_lens)
    query = torch.randn(total, heads, head_dim, dtype=dtype, device=device)
    qsl = [0]
    for q in query_lens:
        qsl.append(qsl[-1] + q)
    return PagedCase(query, key_cache, value_cache, tables.to(device),
                     torch.tensor(seq_lens, dtype=torch.int32, device=device),
                     torch.tensor(qsl, dtype=torch.int32, device=device),
                     list(query_lens), list(seq_lens))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere gives inf."""
    o, r = out.double(), ref.double()
    if not bool(torch.isfinite(o).all()):
        return float("inf")
    return float((o - r).norm() / r.norm().clamp_min(1e-30))


def poisoned_like(t: torch.Tensor) -> torch.Tensor:
    return torch.full_like(t, float("nan"))
