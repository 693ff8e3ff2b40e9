"""`speculative_config`: which proposer drafts tokens and how many (vLLM's option names).

Built once from the user's dict (`LLM(speculative_config={...})`, CLI
`--speculative-config '{json}'`) and validated at construction, so a bad value fails at start-up
with the offending key in the message.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

METHODS = ("ngram", "draft_model", "eagle3")
MAX_SPECULATIVE_TOKENS = 16
_KNOWN_KEYS = {"method", "num_speculative_tokens", "prompt_lookup_min", "prompt_lookup_max",
               "model", "disable_by_batch_size"}


def _require(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ValueError(f"speculative_config.{key}: {message}")


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str
    num_speculative_tokens: int
    prompt_lookup_min: int = 1   # n-gram: shortest suffix looked up in the sequence
    prompt_lookup_max: int = 4   # n-gram: longest suffix looked up
    model: Optional[str] = None  # draft_model / eagle3: the draft checkpoint
    # No drafts in a step while more than this many requests decode (vLLM's name; None: never
    # off). Past some batch size a step is compute-bound and rejected drafts cost throughput.
    disable_by_batch_size: Optional[int] = None

    def __post_init__(self) -> None:
        _require(self.method in METHODS, "method",
                 f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        k = self.num_speculative_tokens
        _require(isinstance(k, int) and not isinstance(k, bool)
                 and 1 <= k <= MAX_SPECULATIVE_TOKENS, "num_speculative_tokens",
                 f"must be an integer in 1..{MAX_SPECULATIVE_TOKENS}, got {k!r}")
        b = self.disable_by_batch_size
        _require(b is None or (isinstance(b, int) and not isinstance(b, bool) and b >= 1),
                 "disable_by_batch_size", f"must be an integer >= 1 or null, got {b!r}")
        if self.method == "ngram":
            lo, hi = self.prompt_lookup_min, self.prompt_lookup_max
            _require(isinstance(lo, int) and lo >= 1, "prompt_lookup_min",
                     f"must be an integer >= 1, got {lo!r}")
            _require(isinstance(hi, int) and hi >= lo, "prompt_lookup_max",
                     f"must be an integer >= prompt_lookup_min ({lo}), got {hi!r}")
        else:
            _require(bool(self.model), "model", f"method {self.method!r} needs a draft model path")

    @property
    def overlaps_steps(self) -> bool:
        """Whether async scheduling may run beside this proposer: its proposals read only token
        ids (n-gram, draft model). EAGLE-3's head follows the target's hidden states step by
        step, which an overlapped step hands over before its tokens are known."""
        return self.method != "eagle3"

    @classmethod
    def from_dict(cls, d: Any) -> "SpeculativeConfig":
        if isinstance(d, SpeculativeConfig):
            return d
        if not isinstance(d, dict):
            raise ValueError(f"speculative_config: must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - _KNOWN_KEYS)
        _require(not unknown, unknown[0] if unknown else "",
                 f"unknown key (known: {', '.join(sorted(_KNOWN_KEYS))})")
        _require("method" in d, "method", "is required")
        _require("num_speculative_tokens" in d, "num_speculative_tokens", "is required")
        return cls(**d)
