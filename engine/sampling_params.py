"""Per-request sampling parameters, with vLLM's field names, validated at construction."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union

from engine.structured_output.params import StructuredOutputsParams
_SAMPLING_EPS = 1e-5


@dataclass
class SamplingParams:
    """How to sample a request's completions.

    Every value is checked in `__post_init__`; a bad one raises `ValueError` whose message starts
    with the field's name. `temperature == 0` means greedy.
    """

    n: int = 1
    best_of: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    seed: Optional[int] = None
    use_beam_search: bool = False
    length_penalty: float = 1.0
    early_stopping: Union[bool, str] = False
    stop: Optional[Union[str, list[str]]] = None
    stop_token_ids: Optional[list[int]] = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: Optional[int] = 16
    min_tokens: int = 0
    logprobs: Optional[int] = None
    prompt_logprobs: Optional[int] = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    logit_bias: Optional[dict[int, float]] = None
    detokenize: bool = True
    # Constrain the output to a JSON schema / regex / choice / EBNF grammar (vLLM's name).
    structured_outputs: Optional[StructuredOutputsParams] = None

    # Normalised views, filled in __post_init__.
    stop_strs: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.best_of is None:
            self.best_of = self.n
        if isinstance(self.stop, str):
            self.stop_strs = [self.stop]
        elif self.stop is None:
            self.stop_strs = []
        else:
            self.stop_strs = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.logit_bias is not None:
            self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
        self.structured_outputs = StructuredOutputsParams.from_value(self.structured_outputs)
        self._verify()

    def _verify(self) -> None:
        def bad(name: str, msg: str) -> None:
            raise ValueError(f"{name}: {msg}")

        if not isinstance(self.n, int) or self.n < 1:
            bad("n", f"must be an integer >= 1, got {self.n!r}")
        if not isinstance(self.best_of, int) or self.best_of < self.n:
            bad("best_of", f"must be an integer >= n ({self.n}), got {self.best_of!r}")
        if not -2.0 <= self.presence_penalty <= 2.0:
            bad("presence_penalty", f"must be in [-2, 2], got {self.presence_penalty}")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            bad("frequency_penalty", f"must be in [-2, 2], got {self.frequency_penalty}")
        if not 0.0 < self.repetition_penalty <= 2.0:
            bad("repetition_penalty", f"must be in (0, 2], got {self.repetition_penalty}")
        if not math.isfinite(self.temperature) or self.temperature < 0.0:
            bad("temperature", f"must be a finite non-negative number, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k == 0 or self.top_k < -1:
            bad("top_k", f"must be -1 (disable) or at least 1, got {self.top_k!r}")
        if not 0.0 <= self.min_p <= 1.0:
            bad("min_p", f"must be in [0, 1], got {self.min_p}")
        if self.seed is not None and (not isinstance(self.seed, int)
                                      or not -2 ** 63 <= self.seed < 2 ** 63):
            # Sequence i seeds its generator with seed + i: int64 keeps that in torch's range.
            bad("seed", f"must be an integer in [-2^63, 2^63), got {self.seed!r}")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            bad("max_tokens", f"must be at least 1, got {self.max_tokens!r}")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            bad("min_tokens", f"must be >= 0, got {self.min_tokens!r}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            bad("min_tokens", f"must be <= max_tokens={self.max_tokens}, got {self.min_tokens}")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or self.logprobs < 0):
            bad("logprobs", f"must be a non-negative integer, got {self.logprobs!r}")
        if self.prompt_logprobs is not None and (
                not isinstance(self.prompt_logprobs, int) or self.prompt_logprobs < 0):
            bad("prompt_logprobs", f"must be a non-negative integer, got {self.prompt_logprobs!r}")
        if any(not isinstance(s, str) or s == "" for s in self.stop_strs):
            bad("stop", "every stop string must be a non-empty string")
        if self.logit_bias and not all(math.isfinite(v) for v in self.logit_bias.values()):
            bad("logit_bias", "values must be finite numbers")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            bad("stop_token_ids", "must be non-negative integers")
        if not math.isfinite(self.length_penalty):
            bad("length_penalty", f"must be a finite number, got {self.length_penalty}")
        if self.use_beam_search:
            if self.temperature > _SAMPLING_EPS:
                bad("temperature", "must be 0 with beam search")
            if self.best_of < 2 and self.n < 2:
                bad("n", "beam search needs a beam width (best_of or n) of at least 2")
            if self.early_stopping not in (True, False, "never"):
                bad("early_stopping", f"must be True, False or 'never', got {self.early_stopping!r}")
        elif self.length_penalty != 1.0:
            bad("length_penalty", "only applies with use_beam_search=True")
        if self.structured_outputs is not None and self.min_tokens > 0:
            # Banning EOS could leave a completed grammar no token to choose.
            bad("min_tokens", f"cannot be combined with structured outputs "
                f"({self.structured_outputs.field}): the grammar decides where the output ends")
        if self.use_beam_search and self.structured_outputs is not None:
            bad("use_beam_search", f"cannot be combined with structured outputs "
                f"({self.structured_outputs.field}): beams are not grammar-constrained")
        if self.best_of > 1 and not self.use_beam_search and self.is_greedy and self.n > 1:
            bad("n", "greedy sampling (temperature=0) gives n identical samples; use temperature > 0")

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _SAMPLING_EPS

    @property
    def num_seqs(self) -> int:
        """Sequences the engine runs for this request: the beam width or best_of samples."""
        return self.best_of

    def to_dict(self) -> dict:
        """The constructor arguments (what the engine core rebuilds the params from)."""
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        if self.structured_outputs is not None:
            d["structured_outputs"] = self.structured_outputs.to_dict()
        return d

    def clone(self, **changes) -> "SamplingParams":
        """A validated copy with some fields changed."""
        return SamplingParams(**{**self.to_dict(), **changes})
