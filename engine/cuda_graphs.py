"""CUDA graphs for decode steps and for mixed prefill+decode steps, replayed on static buffers.

A decode step (one new token per attention sequence: a decode, or a token of a short chunk such
as a speculative verify, see engine/model_inputs.py) is captured for batch sizes 1, 2, 4, 8, 16,
24, ... up to `max_cuda_graph_batch` rows; a step of n rows replays the smallest graph >= n with
the padding rows pointing at slot -1 (never written) and a context of one token.

A step carrying prompt tokens (up to `max_cuda_graph_tokens` rows and `MIXED_PREFILL_SLOTS`
prefills) replays a mixed graph captured per padded token count: the decode kernel is offered
every row and the prefill kernel a fixed number of slots (`MixedLayout`), so without graphs such
a step would pay some 500 eager launches (32 layers of an 8B model), 15-25 ms of host time.

Captured graphs read metadata only from the static device buffers below, and the attention
kernels size their work from `max_model_len` and the padded row count (host constants at
capture), never from per-step host values.
"""
from __future__ import annotations

import bisect
import logging
import time
from typing import TYPE_CHECKING, Optional

import torch

from engine.attention.metadata import AttentionMetadata, MixedLayout
from engine.model_inputs import ModelInputs

if TYPE_CHECKING:
    from engine.model_runner import ModelRunner

logger = logging.getLogger(__name__)

# Prefills one mixed graph serves; a step with more runs eagerly (the prefill kernel's grid has
# this many sequence slots, unused ones exit at once).
MIXED_PREFILL_SLOTS = 16


def graph_batch_sizes(max_bs: int) -> list[int]:
    sizes = [b for b in (1, 2, 4, 8) if b <= max_bs]
    sizes += list(range(16, max_bs + 1, 8 if max_bs <= 64 else 16))
    if max_bs not in sizes:
        sizes.append(max_bs)
    return sorted(set(sizes))


def mixed_token_sizes(max_tokens: int) -> list[int]:
    """Padded row counts of mixed graphs: 16, 32, every 32 up to 512, every 64 up to 1024, then
    every 128 (GEMM padding stays under about 12% of a step's rows)."""
    if max_tokens <= 0:
        return []
    sizes = [t for t in (16, 32) if t <= max_tokens] + list(range(64, min(512, max_tokens) + 1, 32))
    sizes += list(range(576, min(1024, max_tokens) + 1, 64))
    sizes += list(range(1152, max_tokens + 1, 128))
    if max_tokens not in sizes:
        sizes.append(max_tokens)
    return sorted(set(sizes))


class CudaGraphRunner:
    def __init__(self, runner: "ModelRunner"):
        cfg = runner.config
        self.runner = runner
        self.max_model_len = cfg.model.max_model_len
        self.max_bs = cfg.runner.max_cuda_graph_batch  # decode rows, not sequences
        self.sizes = graph_batch_sizes(self.max_bs)
        self.block_table_width = -(-self.max_model_len // runner.block_size)
        self.mixed_sizes = mixed_token_sizes(cfg.runner.max_cuda_graph_tokens)
        self.max_mixed = self.mixed_sizes[-1] if self.mixed_sizes else 0
        dev = runner.device
        n = max(self.max_bs, self.max_mixed)
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(n, dtype=torch.int64, device=dev)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=dev)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=dev)
        self.block_tables = torch.zeros((n, self.block_table_width), dtype=torch.int32, device=dev)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=dev)
        slots = MIXED_PREFILL_SLOTS
        self.mixed_layout = MixedLayout(
            prefill_block_tables=torch.zeros((slots, self.block_table_width), dtype=torch.int32,
                                             device=dev),
            prefill_seq_lens=torch.ones(slots, dtype=torch.int32, device=dev),
            prefill_query_start_loc=torch.zeros(slots + 1, dtype=torch.int32, device=dev))
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.mixed_graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.mixed_outputs: dict[int, torch.Tensor] = {}

    def _meta(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            num_seqs=bs, num_tokens=bs, slot_mapping=self.slot_mapping[:bs],
            query_start_loc=self.query_start_loc[:bs + 1], seq_lens=self.seq_lens[:bs],
            block_tables=self.block_tables[:bs], max_query_len=1,
            max_seq_len=self.max_model_len, query_lens_cpu=[1] * bs, seq_lens_cpu=None)

    def _mixed_meta(self, t: int) -> AttentionMetadata:
        return AttentionMetadata(
            num_seqs=t, num_tokens=t, slot_mapping=self.slot_mapping[:t],
            query_start_loc=self.query_start_loc[:t + 1], seq_lens=self.seq_lens[:t],
            block_tables=self.block_tables[:t], max_query_len=t, max_seq_len=self.max_model_len,
            mixed=self.mixed_layout)

    @torch.inference_mode()
    def capture(self) -> None:
        start = time.time()
        pool = None
        # Largest first: smaller graphs reuse its memory pool.
        for t in reversed(self.mixed_sizes):
            self.mixed_seq_lens_reset(t)
            pool = self._capture_one(self._mixed_meta(t), t, pool, self.mixed_graphs,
                                     self.mixed_outputs)
        self.seq_lens.fill_(1)
        for bs in reversed(self.sizes):
            pool = self._capture_one(self._meta(bs), bs, pool, self.graphs, self.outputs)
        torch.cuda.synchronize()
        logger.info("captured %d decode CUDA graphs (batch sizes up to %d) and %d mixed ones "
                    "(up to %d tokens) in %.1f s", len(self.graphs), self.max_bs,
                    len(self.mixed_graphs), self.max_mixed, time.time() - start)

    def mixed_seq_lens_reset(self, t: int) -> None:
        """Capture-time state of a mixed graph: no decode rows, no prefill slots in use."""
        self.seq_lens[:t].zero_()
        self.mixed_layout.prefill_query_start_loc.zero_()

    def _capture_one(self, meta: AttentionMetadata, n: int, pool, graphs: dict, outputs: dict):
        model = self.runner.model
        for _ in range(2):
            model(self.input_ids[:n], self.positions[:n], meta)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            outputs[n] = model(self.input_ids[:n], self.positions[:n], meta)
        # A graph's first launch uploads it (milliseconds at 8B): pay that here, not in a
        # user's step. The capture-time buffers write no KV (every slot is -1).
        graph.replay()
        graphs[n] = graph
        return graph.pool()

    def _fits_decode_graph(self, meta: AttentionMetadata) -> bool:
        return (meta.max_query_len == 1 and meta.num_tokens == meta.num_seqs
                and meta.num_seqs <= self.max_bs)

    def can_run(self, inputs: ModelInputs) -> bool:
        """A decode graph or a mixed graph can run this step (a step of single rows past the
        decode graphs, e.g. short prompts split into rows, runs as a mixed one)."""
        meta = inputs.meta
        if meta.block_tables.shape[1] > self.block_table_width:
            return False
        if self._fits_decode_graph(meta):
            return True
        if meta.num_tokens > self.max_mixed or meta.query_lens_cpu is None:
            return False
        return meta.num_seqs - _leading_decodes(meta.query_lens_cpu) <= MIXED_PREFILL_SLOTS

    def run(self, inputs: ModelInputs) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(final hidden states, auxiliary hidden states or None) of the step's rows."""
        meta = inputs.meta
        if not self._fits_decode_graph(meta):
            return self._run_mixed(inputs)
        n = meta.num_seqs
        bs = self.sizes[bisect.bisect_left(self.sizes, n)]
        self.input_ids[:n].copy_(inputs.input_ids, non_blocking=True)
        self.positions[:n].copy_(inputs.positions, non_blocking=True)
        self.slot_mapping[:n].copy_(meta.slot_mapping, non_blocking=True)
        self.seq_lens[:n].copy_(meta.seq_lens, non_blocking=True)
        w = meta.block_tables.shape[1]
        self.block_tables[:n, :w].copy_(meta.block_tables, non_blocking=True)
        if bs > n:
            self.slot_mapping[n:bs].fill_(-1)
            self.seq_lens[n:bs].fill_(1)
            self.block_tables[n:bs].zero_()
        self.graphs[bs].replay()
        return _rows(self.outputs[bs], n)

    def _run_mixed(self, inputs: ModelInputs) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Decodes are packed first (build_model_inputs): rows [0, nd) are the decode
        sequences [0, nd); the remaining sequences go to the prefill slots."""
        meta = inputs.meta
        n = meta.num_tokens
        t = self.mixed_sizes[bisect.bisect_left(self.mixed_sizes, n)]
        nd = _leading_decodes(meta.query_lens_cpu)
        npf = meta.num_seqs - nd
        w = meta.block_tables.shape[1]
        self.input_ids[:n].copy_(inputs.input_ids, non_blocking=True)
        self.positions[:n].copy_(inputs.positions, non_blocking=True)
        self.slot_mapping[:n].copy_(meta.slot_mapping, non_blocking=True)
        if t > n:
            self.slot_mapping[n:t].fill_(-1)
            self.positions[n:t].zero_()
        self.seq_lens[:t].zero_()
        if nd:
            self.seq_lens[:nd].copy_(meta.seq_lens[:nd], non_blocking=True)
            self.block_tables[:nd, :w].copy_(meta.block_tables[:nd], non_blocking=True)
        lay = self.mixed_layout
        lay.prefill_block_tables[:npf, :w].copy_(meta.block_tables[nd:], non_blocking=True)
        lay.prefill_seq_lens[:npf].copy_(meta.seq_lens[nd:], non_blocking=True)
        lay.prefill_query_start_loc[:npf + 1].copy_(meta.query_start_loc[nd:], non_blocking=True)
        lay.prefill_query_start_loc[npf + 1:].fill_(n)  # unused slots: empty query ranges
        self.mixed_graphs[t].replay()
        return _rows(self.mixed_outputs[t], n)


def _rows(out, n: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The first n rows of a captured output: hidden states, or (hidden, auxiliary hidden
    states) for a model that returns its auxiliary layers (EAGLE-3's target)."""
    if isinstance(out, tuple):
        return out[0][:n], out[1][:n]
    return out[:n], None


def _leading_decodes(query_lens: list[int]) -> int:
    nd = 0
    while nd < len(query_lens) and query_lens[nd] == 1:
        nd += 1
    return nd
