"""This process's tensor-parallel group: rank, world size, and the collectives the sharded layers
call (all-reduce after a row-parallel layer or the vocab-parallel embedding, all-gather of the
vocab-parallel logits).

One group per process, set up once by `init_tensor_parallel` (gloo on the CPU, NCCL on CUDA) and
torn down by `destroy_tensor_parallel`. Without a group every helper answers world size 1 / rank 0
and the collectives are never called (layers check `tp_size() > 1` at construction), so the
single-device path costs nothing extra per step. The collectives are plain `torch.distributed`
calls on tensors, which NCCL can record inside a CUDA graph.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class TPGroup:
    rank: int
    world_size: int
    backend: str

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"tensor parallel rank {self.rank} outside world {self.world_size}")


_GROUP: Optional[TPGroup] = None


def init_tensor_parallel(rank: int, world_size: int, init_method: str, device: torch.device,
                         timeout_s: float) -> TPGroup:
    """Join the group of `world_size` ranks rendezvousing at `init_method` (tcp://host:port).
    A collective that waits longer than `timeout_s` on a peer raises instead of hanging."""
    global _GROUP
    if _GROUP is not None:
        raise RuntimeError("a tensor-parallel group is already initialised in this process")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, init_method=init_method, rank=rank,
                                world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    _GROUP = TPGroup(rank, world_size, backend)
    return _GROUP


def destroy_tensor_parallel() -> None:
    global _GROUP
    if _GROUP is not None and _GROUP.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
    _GROUP = None


def tp_size() -> int:
    return _GROUP.world_size if _GROUP is not None else 1


def tp_rank() -> int:
    return _GROUP.rank if _GROUP is not None else 0


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum `x` over the group (in place; returns it)."""
    dist.all_reduce(x)
    return x


def all_reduce_min(x: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(x, op=dist.ReduceOp.MIN)
    return x


def all_gather_last_dim(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `x` along the last dim, in rank order."""
    parts = [torch.empty_like(x) for _ in range(tp_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=-1)


def kv_heads_per_rank(num_kv_heads: int) -> int:
    """KV heads each rank holds: its share, or one replicated head when fewer heads than ranks."""
    n = tp_size()
    if num_kv_heads >= n:
        if num_kv_heads % n:
            raise ValueError(f"num_key_value_heads {num_kv_heads} not divisible by tensor "
                             f"parallel size {n}")
        return num_kv_heads // n
    if n % num_kv_heads:
        raise ValueError(f"num_key_value_heads {num_kv_heads} cannot be replicated over tensor "
                         f"parallel size {n}")
    return 1


def heads_per_rank(num_heads: int) -> int:
    n = tp_size()
    if num_heads % n:
        raise ValueError(f"num_attention_heads {num_heads} not divisible by tensor parallel "
                         f"size {n}")
    return num_heads // n
