"""The interface every speculative proposer implements."""
from __future__ import annotations

from abc import ABC, abstractmethod

from engine.sequence import Request, Sequence


def speculates(req: Request) -> bool:
    """Requests that speculate: one sequence, not beam search (n > 1 decodes plainly), no
    output grammar (its mask advances token by token; constrained requests decode plainly)."""
    return req.single_seq and req.beam_state is None and req.grammar is None


class Proposer(ABC):
    """Drafts tokens that are likely to follow a sequence. Proposals only cost speed when
    wrong: the verifier keeps outputs exact whatever is proposed."""

    @abstractmethod
    def propose(self, seqs: list[Sequence], max_tokens: list[int]) -> list[list[int]]:
        """Up to `max_tokens[i]` draft tokens to follow all of `seqs[i].token_ids`."""

    def release(self, live_seq_ids: set[int]) -> None:
        """Forget per-sequence state of sequences not in `live_seq_ids` (finished ones)."""
