"""What flows out of the engine.

`EngineCoreRequest` / `EngineCoreOutput` are the typed messages between a frontend (the offline
`LLM`, or the HTTP process) and the engine core (scheduler + runner); they are msgspec structs so
the multiprocess client can send them as msgpack. `RequestOutput` / `CompletionOutput` are the
user-facing results, with vLLM's names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import msgspec

# {token_id: logprob} for one position: the sampled/prompt token plus the top-k alternatives.
LogprobsDict = dict[int, float]


class EngineCoreRequest(msgspec.Struct, omit_defaults=True):
    """A tokenized, validated request as the engine core receives it."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: dict  # SamplingParams fields (init=True ones), rebuilt by the core
    arrival_time: float
    eos_token_id: Optional[int] = None
    # The frontend needs this request's outputs only once it has finished (no progress to
    # report, no stop strings to match): the core then reports it once, at the end.
    final_only: bool = False


class SeqDelta(msgspec.Struct, omit_defaults=True, gc=False):
    """New tokens of one sequence (choice `index`) since the last output.

    For beam search the core reports only finished results, with `replace=True`: `token_ids` is
    then the whole output of that beam, not a delta.
    """

    index: int
    token_ids: list[int]
    cumulative_logprob: float = 0.0
    logprobs: Optional[list[LogprobsDict]] = None
    finish_reason: Optional[str] = None
    stop_reason: Union[int, str, None] = None
    replace: bool = False


class EngineCoreOutput(msgspec.Struct, omit_defaults=True, gc=False):
    request_id: str
    seqs: list[SeqDelta]
    finished: bool = False
    # New prompt_logprobs entries (first entry of a prompt is None), when requested.
    prompt_logprobs: Optional[list[Optional[LogprobsDict]]] = None
    num_cached_tokens: int = 0
    error: Optional[str] = None  # set when the core failed this request


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: Optional[float]
    logprobs: Optional[list[LogprobsDict]]
    finish_reason: Optional[str] = None
    stop_reason: Union[int, str, None] = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    prompt_logprobs: Optional[list[Optional[LogprobsDict]]] = None
    num_cached_tokens: int = 0
    metrics: dict = field(default_factory=dict)
