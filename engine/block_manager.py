"""Maps sequences' logical KV blocks to physical blocks in a GPU pool and a CPU (swap) pool.

Each `Sequence.block_table` lists the physical blocks holding its KV, in order; block i holds
token positions `[i*block_size, (i+1)*block_size)`. Blocks are shared by reference count (forked
samples and beams, cached prefixes); a shared block is copied before it is written
(copy-on-write). Because only positions `>= num_computed_tokens` are ever written, the only block
that can need a copy is the one holding position `num_computed_tokens`.

The manager never touches tensors: it returns the (src, dst) block pairs the model runner must
copy (CoW, swap out, swap in).
"""
from __future__ import annotations

from typing import Iterable, Optional

from engine.block_pool import BlockPool
from engine.sequence import Request, Sequence


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def hash_block(parent_hash: Optional[int], tokens: Iterable[int]) -> int:
    """Content hash of a full block, chained over every previous block of the sequence."""
    return hash((parent_hash, tuple(tokens)))


class BlockManager:
    def __init__(self, num_gpu_blocks: int, num_cpu_blocks: int, block_size: int,
                 enable_prefix_caching: bool = False):
        self.block_size = block_size
        self.gpu = BlockPool(num_gpu_blocks, "gpu")
        self.cpu = BlockPool(num_cpu_blocks, "cpu")
        self.enable_prefix_caching = enable_prefix_caching
        self.prefix_cache_queries = 0  # prompt tokens looked up in the cache
        self.prefix_cache_hits = 0  # of those, tokens found cached

    # ---- queries -------------------------------------------------------------------------
    @property
    def num_free_gpu_blocks(self) -> int:
        return self.gpu.num_free

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """New GPU blocks `allocate_slots(seq, num_new_tokens)` would take (growth + CoW)."""
        end = seq.num_computed_tokens + num_new_tokens
        need = max(0, _cdiv(end, self.block_size) - len(seq.block_table))
        if num_new_tokens > 0 and self._needs_cow(seq):
            need += 1
        return need

    def _needs_cow(self, seq: Sequence) -> bool:
        idx = seq.num_computed_tokens // self.block_size
        return idx < len(seq.block_table) and self.gpu.ref_count(seq.block_table[idx]) > 1

    def distinct_blocks(self, seqs: Iterable[Sequence]) -> int:
        return len({b for s in seqs for b in s.block_table})

    # ---- allocation ----------------------------------------------------------------------
    def allocate_slots(self, seq: Sequence, num_new_tokens: int) -> list[tuple[int, int]]:
        """Make room for the next `num_new_tokens` tokens; returns CoW copies (src, dst)."""
        copies: list[tuple[int, int]] = []
        if num_new_tokens > 0 and self._needs_cow(seq):
            idx = seq.num_computed_tokens // self.block_size
            old = seq.block_table[idx]
            new = self.gpu.allocate()
            copies.append((old, new))
            self.gpu.decref(old)
            seq.block_table[idx] = new
        end = seq.num_computed_tokens + num_new_tokens
        while len(seq.block_table) * self.block_size < end:
            seq.block_table.append(self.gpu.allocate())
        return copies

    def trim_to_computed(self, seq: Sequence) -> None:
        """Free the blocks past those holding the sequence's computed tokens (rejected drafts)."""
        keep = _cdiv(seq.num_computed_tokens, self.block_size)
        while len(seq.block_table) > keep:
            self.gpu.decref(seq.block_table.pop())

    def fork(self, parent: Sequence, child: Sequence, num_tokens: Optional[int] = None) -> None:
        """`child` shares the parent's blocks holding its first `num_tokens` (default: all computed)."""
        n = parent.num_computed_tokens if num_tokens is None else num_tokens
        if child.block_table:
            self.free_seq(child)
        blocks = parent.block_table[:_cdiv(n, self.block_size)]
        for b in blocks:
            self.gpu.incref(b)
        child.block_table = list(blocks)
        child.num_computed_tokens = n
        child.block_hashes = parent.block_hashes[:n // self.block_size]

    def free_seq(self, seq: Sequence, pool: Optional[BlockPool] = None) -> None:
        pool = pool or self.gpu
        # Tail first: with caching, the prefix blocks become the most recently used free blocks.
        for b in reversed(seq.block_table):
            pool.decref(b)
        seq.block_table = []

    # ---- prefix caching ------------------------------------------------------------------
    def match_prefix(self, seq: Sequence, max_tokens: int) -> int:
        """Adopt cached blocks for the longest cached prefix of `seq`'s first `max_tokens` tokens.

        At least one token is always left to compute, so a full hit still yields logits. Returns
        the number of tokens now computed from the cache. Only for a sequence holding no blocks.
        """
        assert not seq.block_table and seq.num_computed_tokens == 0
        if not self.enable_prefix_caching:
            return 0
        self.prefix_cache_queries += max_tokens
        self._extend_hashes(seq, (max_tokens - 1) // self.block_size)
        hits: list[int] = []
        for i in range((max_tokens - 1) // self.block_size):
            bid = self.gpu.lookup(seq.block_hashes[i])
            if bid is None:
                break
            hits.append(bid)
        for bid in hits:
            self.gpu.incref(bid)
        seq.block_table = hits
        seq.num_computed_tokens = len(hits) * self.block_size
        self.prefix_cache_hits += seq.num_computed_tokens
        return seq.num_computed_tokens

    def undo_prefix_match(self, seq: Sequence, num_hit_tokens: int, max_tokens: int) -> None:
        """Give back blocks adopted by `match_prefix` when the request could not be admitted.

        The lookup is counted again when admission is retried, so this one is uncounted.
        """
        self.prefix_cache_queries -= max_tokens
        self.prefix_cache_hits -= num_hit_tokens
        self.free_seq(seq)
        seq.num_computed_tokens = 0

    def _extend_hashes(self, seq: Sequence, num_full_blocks: int) -> None:
        bs = self.block_size
        hashes = seq.block_hashes
        while len(hashes) < num_full_blocks:
            i = len(hashes)
            hashes.append(hash_block(hashes[-1] if hashes else None, seq.token_ids[i * bs:(i + 1) * bs]))

    def register_computed(self, seq: Sequence) -> None:
        """Publish the sequence's newly completed full blocks in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        # Only blocks whose tokens are all known (not a pending placeholder) can be hashed.
        # Draft tokens are not known either: they may be rejected.
        known = len(seq.token_ids) - seq.num_pending - seq.num_draft
        full = min(seq.num_computed_tokens, known) // self.block_size
        self._extend_hashes(seq, full)
        for i in range(full):
            self.gpu.register(seq.block_table[i], seq.block_hashes[i])

    # ---- swapping ------------------------------------------------------------------------
    def can_swap_out(self, request: Request) -> bool:
        return self.cpu.num_free >= self.distinct_blocks(request.live_seqs())

    def swap_out(self, request: Request) -> list[tuple[int, int]]:
        """Move the request's live sequences' blocks to the CPU pool; (gpu, cpu) pairs to copy.

        A block shared by several of its sequences is moved once and stays shared on the CPU.
        """
        return self._move(request.live_seqs(), self.gpu, self.cpu)

    def can_swap_in(self, request: Request, num_new_tokens: dict[int, int]) -> bool:
        """Room for the request's blocks plus what its next step (`num_new_tokens` per seq id)
        will add, counting a possible CoW copy per sequence."""
        seqs = request.live_seqs()
        growth = sum(max(0, _cdiv(s.num_computed_tokens + num_new_tokens.get(s.seq_id, 0),
                                  self.block_size) - len(s.block_table)) + 1 for s in seqs)
        return self.gpu.num_free >= self.distinct_blocks(seqs) + growth

    def swap_in(self, request: Request) -> list[tuple[int, int]]:
        """Bring a swapped request back; (cpu, gpu) pairs to copy."""
        return self._move(request.live_seqs(), self.cpu, self.gpu)

    @staticmethod
    def _move(seqs: list[Sequence], src: BlockPool, dst: BlockPool) -> list[tuple[int, int]]:
        mapping: dict[int, int] = {}
        for seq in seqs:
            new_table = []
            for b in seq.block_table:
                if b in mapping:
                    dst.incref(mapping[b])
                else:
                    mapping[b] = dst.allocate()
                new_table.append(mapping[b])
                src.decref(b)
            seq.block_table = new_table
        return list(mapping.items())

    # ---- accounting ----------------------------------------------------------------------
    def usage(self, seqs: Iterable[Sequence]) -> dict[str, int]:
        """Slots and blocks of the given (running) sequences: logical vs physical, used vs held."""
        seqs = list(seqs)
        logical = sum(len(s.block_table) for s in seqs)
        physical = self.distinct_blocks(seqs)
        # Slots holding KV: a shared block's tokens count once per physical block.
        used_per_block: dict[int, int] = {}
        for s in seqs:
            for i, b in enumerate(s.block_table):
                filled = min(self.block_size, max(0, s.num_computed_tokens - i * self.block_size))
                used_per_block[b] = max(used_per_block.get(b, 0), filled)
        return {
            "logical_blocks": logical,
            "physical_blocks": physical,
            "slots_allocated": physical * self.block_size,
            "slots_used": sum(used_per_block.values()),
        }
