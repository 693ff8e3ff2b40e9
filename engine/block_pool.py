"""A pool of fixed-size physical KV blocks on one device, with reference counts.

Invariants:
- a block is in `free` exactly when its ref_count is 0;
- `num_free + num_used == num_blocks`;
- with prefix caching, a freed block keeps its hash (and stays findable through `cached`) until it
  is handed out again; the free queue is ordered least-recently-used first, and blocks holding no
  cached content are handed out before cached ones.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional


class Block:
    __slots__ = ("block_id", "ref_count", "block_hash")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.block_hash: Optional[int] = None


class BlockPool:
    def __init__(self, num_blocks: int, name: str = "gpu"):
        self.name = name
        self.num_blocks = num_blocks
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[int, int] = {}  # content hash -> block id

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free)

    def ref_count(self, block_id: int) -> int:
        return self.blocks[block_id].ref_count

    def allocate(self) -> int:
        """Hand out the least recently used free block (evicting its cached content)."""
        if not self.free:
            raise RuntimeError(f"{self.name} block pool exhausted")
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.block_hash is not None:
            if self.cached.get(block.block_hash) == block_id:
                del self.cached[block.block_hash]
            block.block_hash = None
        block.ref_count = 1
        return block_id

    def incref(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free[block_id]
        block.ref_count += 1

    def decref(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count <= 0:
            raise RuntimeError(f"double free of {self.name} block {block_id}")
        block.ref_count -= 1
        if block.ref_count == 0:
            self.free[block_id] = None
            if block.block_hash is None:
                # Nothing worth keeping: hand it out before any cached block.
                self.free.move_to_end(block_id, last=False)

    def lookup(self, block_hash: int) -> Optional[int]:
        return self.cached.get(block_hash)

    def register(self, block_id: int, block_hash: int) -> None:
        """Record that a full block holds the content identified by `block_hash`."""
        block = self.blocks[block_id]
        if block.block_hash is not None:
            return
        if block_hash not in self.cached:
            self.cached[block_hash] = block_id
            block.block_hash = block_hash

    def check_consistency(self) -> None:
        """Assert the pool's invariants (used by tests)."""
        assert self.num_free + sum(1 for b in self.blocks if b.ref_count > 0) == self.num_blocks
        for b in self.blocks:
            assert b.ref_count >= 0
            assert (b.ref_count == 0) == (b.block_id in self.free)
        for h, bid in self.cached.items():
            assert self.blocks[bid].block_hash == h
