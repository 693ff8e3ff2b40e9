"""The interface every speculative proposer implements."""
from __future__ import annotations

from abc import ABC, abstractmethod

from engine.sequence import Request, Sequence


def speculates(req: Request) -> bool:
    """Requests whose sequences speculate (each of n > 1 on its own): not beam search (its
    candidates are ranked a step at a time), no output grammar (its mask advances token by
    token; constrained requests decode plainly)."""
    return req.beam_state is None and req.grammar is None


class Proposer(ABC):
    """Drafts tokens that are likely to follow a sequence. Proposals only cost speed when
    wrong: the verifier keeps outputs exact whatever is proposed."""

    @abstractmethod
    def propose(self, seqs: list[Sequence], max_tokens: list[int]) -> list[list[int]]:
        """Up to `max_tokens[i]` draft tokens to follow all of `seqs[i].token_ids`."""

    def release(self, live_seq_ids: set[int]) -> None:
        """Forget per-sequence state of sequences not in `live_seq_ids` (finished ones)."""
