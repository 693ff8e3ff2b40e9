"""The interface every speculative proposer implements."""
from __future__ import annotations

from abc import ABC, abstractmethod

from engine.sequence import Sequence


class Proposer(ABC):
    """Drafts tokens that are likely to follow a sequence. Proposals only cost speed when
    wrong: the verifier keeps outputs exact whatever is proposed."""

    @abstractmethod
    def propose(self, seqs: list[Sequence], max_tokens: list[int]) -> list[list[int]]:
        """Up to `max_tokens[i]` draft tokens to follow all of `seqs[i].token_ids`."""

    def release(self, live_seq_ids: set[int]) -> None:
        """Forget per-sequence state of sequences not in `live_seq_ids` (finished ones)."""
