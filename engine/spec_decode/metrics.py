"""Counters of speculative decoding, reported in `EngineCore.stats()`."""
from __future__ import annotations


class SpecDecodeMetrics:
    def __init__(self, k: int):
        self.num_drafts = 0           # verify chunks run
        self.num_draft_tokens = 0     # draft tokens verified
        self.num_accepted_tokens = 0  # of those, accepted
        self.accepted_by_position = [0] * k  # accepted draft j (0-based) counts once each

    def record(self, num_draft: int, num_accepted: int) -> None:
        self.num_drafts += 1
        self.num_draft_tokens += num_draft
        self.num_accepted_tokens += num_accepted
        for j in range(num_accepted):
            self.accepted_by_position[j] += 1

    def stats(self) -> dict:
        return {
            "spec_decode_num_drafts": self.num_drafts,
            "spec_decode_num_draft_tokens": self.num_draft_tokens,
            "spec_decode_num_accepted_tokens": self.num_accepted_tokens,
            "spec_decode_acceptance_rate": (self.num_accepted_tokens / self.num_draft_tokens
                                            if self.num_draft_tokens else 0.0),
            "spec_decode_accepted_by_position": list(self.accepted_by_position),
        }
