"""A request's compiled grammar and one xgrammar matcher per sequence.

Invariant: a sequence's matcher has accepted exactly its first `accepted[seq_id]` output tokens.
Output tokens are never taken back (preemption, by recompute or swap, keeps them; constrained
requests never hold placeholder tokens), so the matcher survives preemption as it is.
"""
from __future__ import annotations

import logging
from typing import Any

from engine.sequence import Sequence

logger = logging.getLogger(__name__)


class RequestGrammar:
    def __init__(self, compiled: Any):
        import xgrammar as xgr

        self._xgr = xgr
        self.compiled = compiled
        self._matchers: dict[int, Any] = {}
        self._accepted: dict[int, int] = {}
        self._rejected: set[int] = set()

    def __reduce__(self):
        """Tensor-parallel workers receive requests pickled with each step; they sample only to
        mirror rank 0 (whose samples are the ones reported), so they get no grammar."""
        return (_no_grammar, ())

    def _matcher(self, seq: Sequence) -> Any:
        m = self._matchers.get(seq.seq_id)
        if m is None:
            m = self._matchers[seq.seq_id] = self._xgr.GrammarMatcher(self.compiled)
            self._accepted[seq.seq_id] = 0
        return m

    def advance(self, seq: Sequence) -> bool:
        """Feed the sequence's new output tokens to its matcher. True when the grammar ends the
        sequence: it accepted a stop token, or (never with a correct mask) rejected a token."""
        m = self._matcher(seq)
        sid = seq.seq_id
        out = seq.token_ids
        start = seq.prompt_len + self._accepted[sid]
        end = len(out) - seq.num_pending
        for i in range(start, end):
            if sid in self._rejected:
                break
            if not m.accept_token(out[i]):
                logger.warning("grammar rejected token %d of sequence %d", out[i], sid)
                self._rejected.add(sid)
        self._accepted[sid] = max(0, end - seq.prompt_len)
        return sid in self._rejected or m.is_terminated()

    def next_matcher(self, seq: Sequence) -> Any:
        """`seq`'s matcher, caught up with its output: it fills the tokens allowed next."""
        self.advance(seq)
        return self._matcher(seq)


def _no_grammar() -> None:
    return None
