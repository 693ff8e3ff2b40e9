"""The sampler hook: mask every constrained row's logits to the tokens its grammar allows.

Only constrained rows get a bitmask row filled (on the CPU, by xgrammar); the mask is applied
in place before any other processing, with xgrammar's kernel (its CUDA/Triton kernel on a GPU,
its CPU implementation otherwise), to those rows only (`indices`).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch


class GrammarLogitsProcessor:
    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def prepare(self, rows: list[tuple[Any, Any]]) -> Optional[Callable[[torch.Tensor], None]]:
        """For the step whose logits row i belongs to `rows[i]`: the in-place mask, or None
        when no row is constrained."""
        constrained = [i for i, (req, _) in enumerate(rows) if req.grammar is not None]
        if not constrained:
            return None
        import xgrammar as xgr

        bitmask = xgr.allocate_token_bitmask(len(rows), self.vocab_size)
        for i in constrained:
            req, seq = rows[i]
            req.grammar.fill_bitmask(seq, bitmask, i)

        def apply(logits: torch.Tensor) -> None:
            mask = bitmask.to(logits.device, non_blocking=True)
            xgr.apply_token_bitmask_inplace(logits, mask, vocab_size=self.vocab_size,
                                            indices=constrained)

        return apply
