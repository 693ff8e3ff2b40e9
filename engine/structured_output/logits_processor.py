"""The sampler hook: mask every constrained row's logits to the tokens its grammar allows.

Only constrained rows get a bitmask row, filled on the CPU by xgrammar's batch matcher (its own
thread pool, all rows at once) while the step's forward pass runs on the GPU; the mask is then
applied in place before any other processing, with xgrammar's kernel (its CUDA/Triton kernel on
a GPU, its CPU implementation otherwise), to those rows only (`indices`). On CUDA the bitmask
lives in pinned buffers, two used in turn, so its copy to the device never blocks the host and
never races the next step's fill.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch


class GrammarLogitsProcessor:
    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self._batch: Any = None
        self._buffers: list[torch.Tensor] = []
        self._turn = 0

    def _bitmask(self, rows: int, pin: bool) -> torch.Tensor:
        import xgrammar as xgr

        if not self._buffers or self._buffers[0].shape[0] < rows or \
                self._buffers[0].is_pinned() != pin:
            size = max(rows, 64)
            self._buffers = [xgr.allocate_token_bitmask(size, self.vocab_size) for _ in range(2)]
            if pin:
                self._buffers = [b.pin_memory() for b in self._buffers]
        self._turn ^= 1
        return self._buffers[self._turn][:rows]

    def prepare(self, rows: list[tuple[Any, Any]],
                device: Optional[torch.device] = None) -> Optional[Callable[[torch.Tensor], None]]:
        """For the step whose logits row i belongs to `rows[i]`: the in-place mask, or None
        when no row is constrained."""
        # A sequence finished by the step before this one (its grammar complete) is still
        # computed here when steps overlap; its sample is discarded, and it gets no mask.
        constrained = [i for i, (req, seq) in enumerate(rows)
                       if req.grammar is not None and not seq.is_finished]
        if not constrained:
            return None
        import xgrammar as xgr

        if self._batch is None:
            self._batch = xgr.BatchGrammarMatcher()
        pin = device is not None and device.type == "cuda"
        bitmask = self._bitmask(len(rows), pin)
        matchers = [rows[i][0].grammar.next_matcher(rows[i][1]) for i in constrained]
        self._batch.batch_fill_next_token_bitmask(matchers, bitmask, constrained)

        def apply(logits: torch.Tensor) -> None:
            mask = bitmask.to(logits.device, non_blocking=True)
            xgr.apply_token_bitmask_inplace(logits, mask, vocab_size=self.vocab_size,
                                            indices=constrained)

        return apply
