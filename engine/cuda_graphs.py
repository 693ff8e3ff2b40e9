"""CUDA graphs for decode steps: one graph per padded batch size, replayed on static buffers.

A decode step (one new token per sequence) is captured for batch sizes 1, 2, 4, 8, 16, 24, ...
up to `max_cuda_graph_batch`; a step of n sequences replays the smallest graph >= n with the
padding rows pointing at slot -1 (never written) and a context of one token. Captured graphs read
metadata only from the static device buffers below, and the attention kernels size their work
from `max_model_len` (a host constant at capture), never from per-step host values.
"""
from __future__ import annotations

import bisect
import logging
import time
from typing import TYPE_CHECKING

import torch

from engine.attention.metadata import AttentionMetadata
from engine.model_inputs import ModelInputs

if TYPE_CHECKING:
    from engine.model_runner import ModelRunner

logger = logging.getLogger(__name__)


def graph_batch_sizes(max_bs: int) -> list[int]:
    sizes = [b for b in (1, 2, 4, 8) if b <= max_bs]
    sizes += list(range(16, max_bs + 1, 8 if max_bs <= 64 else 16))
    if max_bs not in sizes:
        sizes.append(max_bs)
    return sorted(set(sizes))


class CudaGraphRunner:
    def __init__(self, runner: "ModelRunner"):
        cfg = runner.config
        self.runner = runner
        self.max_model_len = cfg.model.max_model_len
        self.max_bs = min(cfg.scheduler.max_num_seqs, cfg.runner.max_cuda_graph_batch)
        self.sizes = graph_batch_sizes(self.max_bs)
        self.block_table_width = -(-self.max_model_len // runner.block_size)
        dev = runner.device
        n = self.max_bs
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(n, dtype=torch.int64, device=dev)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=dev)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=dev)
        self.block_tables = torch.zeros((n, self.block_table_width), dtype=torch.int32, device=dev)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=dev)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}

    def _meta(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            num_seqs=bs, num_tokens=bs, slot_mapping=self.slot_mapping[:bs],
            query_start_loc=self.query_start_loc[:bs + 1], seq_lens=self.seq_lens[:bs],
            block_tables=self.block_tables[:bs], max_query_len=1,
            max_seq_len=self.max_model_len, query_lens_cpu=[1] * bs, seq_lens_cpu=None)

    @torch.inference_mode()
    def capture(self) -> None:
        start = time.time()
        model = self.runner.model
        pool = None
        for bs in reversed(self.sizes):  # largest first: smaller graphs reuse its memory pool
            meta = self._meta(bs)
            for _ in range(2):
                model(self.input_ids[:bs], self.positions[:bs], meta)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = model(self.input_ids[:bs], self.positions[:bs], meta)
            pool = graph.pool()
            self.graphs[bs] = graph
            self.outputs[bs] = out
        torch.cuda.synchronize()
        logger.info("captured %d CUDA graphs (batch sizes up to %d) in %.1f s",
                    len(self.graphs), self.max_bs, time.time() - start)

    def can_run(self, inputs: ModelInputs) -> bool:
        meta = inputs.meta
        return (meta.max_query_len == 1 and meta.num_tokens == meta.num_seqs
                and meta.num_seqs <= self.max_bs
                and meta.block_tables.shape[1] <= self.block_table_width)

    def run(self, inputs: ModelInputs) -> torch.Tensor:
        meta = inputs.meta
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
        return self.outputs[bs][:n]
