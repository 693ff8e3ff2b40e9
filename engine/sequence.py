"""A request and its sequences own all of their scheduling state.

A `Request` is what a user submitted (one prompt, one `SamplingParams`); it runs as one or more
`Sequence`s (parallel samples or beams) that share the prompt's KV blocks. Invariant of every
sequence: `num_computed_tokens <= len(token_ids)`, and the KV of the first
`num_computed_tokens` tokens is stored in the blocks of `block_table`.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from engine.sampling_params import SamplingParams


# Token id standing for a token that a step still in flight is sampling (see num_pending).
PLACEHOLDER = -1


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    SWAPPED = "swapped"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"
    FINISHED_IGNORED = "ignored"

    @property
    def finish_reason(self) -> Optional[str]:
        """OpenAI's finish_reason for finished states, else None."""
        return self.value if self.is_finished else None


# A plain attribute per member: checked for every sequence on every step, so no set lookups.
for _status in SequenceStatus:
    _status.is_finished = _status.name.startswith("FINISHED")


class Sequence:
    """One generated continuation: its tokens, KV blocks and sampling history."""

    __slots__ = ("seq_id", "index", "token_ids", "prompt_len", "num_computed_tokens",
                 "block_table", "_status", "is_finished", "cumulative_logprob",
                 "stop_reason", "generator", "num_new_outputs", "block_hashes",
                 "new_logprobs", "finish_reported", "num_pending", "num_draft", "token_array")

    def __init__(self, seq_id: int, index: int, prompt_token_ids: list[int]):
        self.seq_id = seq_id
        self.index = index  # position among the request's sequences (choice index)
        self.token_ids: list[int] = list(prompt_token_ids)
        self.prompt_len = len(prompt_token_ids)
        self.num_computed_tokens = 0
        self.block_table: list[int] = []
        self.status = SequenceStatus.WAITING
        self.cumulative_logprob = 0.0
        self.stop_reason: Optional[int | str] = None
        self.generator: Optional[torch.Generator] = None
        self.num_new_outputs = 0  # output tokens not yet reported to the frontend
        # Chained content hashes of this sequence's full blocks (prefix caching); depend on tokens
        # only, so they survive preemption.
        self.block_hashes: list[int] = []
        self.new_logprobs: list[dict[int, float]] = []  # logprobs not yet reported
        self.finish_reported = False
        # Trailing PLACEHOLDER tokens: sampled by a step still in flight (async scheduling).
        self.num_pending = 0
        # Trailing draft tokens (speculative decoding): proposed before a step, scheduled with
        # it as one verify chunk, and replaced by the accepted ones once the step ran.
        self.num_draft = 0
        # int64 copy of the known tokens, kept by engine/token_history.py for penalties.
        self.token_array = None

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def status(self) -> SequenceStatus:
        return self._status

    @status.setter
    def status(self, status: SequenceStatus) -> None:
        # Invariant: `is_finished == status.is_finished`. A plain attribute, since it is read for
        # every sequence several times per step; every status change goes through here.
        self._status = status
        self.is_finished = status.is_finished

    def __getstate__(self) -> dict:
        """Tensor-parallel workers receive sequences pickled with each step: the token buffer
        is a cache of `token_ids`, not sent (a worker rebuilds it when it needs one)."""
        return {name: getattr(self, name) for name in self.__slots__ if name != "token_array"}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)
        self.token_array = None

    @property
    def num_real_output_tokens(self) -> int:
        return len(self.token_ids) - self.prompt_len - self.num_pending

    def append_token(self, token_id: int, logprob: float) -> None:
        self.token_ids.append(token_id)
        self.cumulative_logprob += logprob
        self.num_new_outputs += 1

    def append_placeholder(self) -> None:
        """A token the in-flight step is sampling; the next step may already compute it."""
        self.token_ids.append(PLACEHOLDER)
        self.num_pending += 1

    def resolve_placeholder(self, token_id: int, logprob: float) -> None:
        """The oldest pending token became known."""
        self.token_ids[len(self.token_ids) - self.num_pending] = token_id
        self.num_pending -= 1
        self.cumulative_logprob += logprob
        self.num_new_outputs += 1

    def drop_placeholders(self) -> None:
        if self.num_pending:
            del self.token_ids[len(self.token_ids) - self.num_pending:]
            self.num_pending = 0

    def add_drafts(self, draft_token_ids: list[int]) -> None:
        assert not self.num_draft and not self.num_pending
        self.token_ids.extend(draft_token_ids)
        self.num_draft = len(draft_token_ids)

    def drop_drafts(self, num: Optional[int] = None) -> list[int]:
        """Remove the last `num` (default: all) draft tokens; returns them."""
        num = self.num_draft if num is None else min(num, self.num_draft)
        if num <= 0:
            return []
        dropped = self.token_ids[len(self.token_ids) - num:]
        del self.token_ids[len(self.token_ids) - num:]
        self.num_draft -= num
        return dropped

    def reset_for_recompute(self) -> None:
        """Drop all KV state; the tokens (prompt and outputs) are recomputed on readmission."""
        self.num_computed_tokens = 0
        self.block_table = []

    def __repr__(self) -> str:
        return (f"Sequence(id={self.seq_id}, idx={self.index}, tokens={len(self.token_ids)}, "
                f"computed={self.num_computed_tokens}, blocks={len(self.block_table)}, "
                f"status={self.status.name})")


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: Optional[float] = None
    first_token_time: Optional[float] = None
    finished_time: Optional[float] = None


class Request:
    """A user's request: the prompt, its parameters and its sequences.

    Sequences are created up front (`params.num_seqs` of them). Until the prompt is computed only
    the leader (`seqs[0]`) holds blocks; the others adopt the leader's prompt blocks by fork at
    the moment the prompt's KV is complete, so the prompt is stored once.
    """

    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                 seq_ids: list[int], eos_token_id: Optional[int],
                 arrival_time: Optional[float] = None, prompt: Optional[str] = None):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = list(prompt_token_ids)
        self.params = params
        self.eos_token_id = eos_token_id
        self.metrics = RequestMetrics(arrival_time=arrival_time or time.time())
        # Never changes after construction (preemption recomputes the same prompt).
        self.prompt_len = len(self.prompt_token_ids)
        self.seqs = [Sequence(sid, i, prompt_token_ids) for i, sid in enumerate(seq_ids)]
        # The sequence list never grows or shrinks (beams reuse their Sequence objects), so the
        # one-sequence fast paths of the engine can test this once.
        self.single_seq = len(self.seqs) == 1
        # Penalties read the latest tokens on the host when sampling (params never change).
        self.has_penalties = (params.repetition_penalty != 1.0 or params.presence_penalty != 0.0
                              or params.frequency_penalty != 0.0)
        # Set by the frontend when it wants this request's outputs only once it has finished:
        # the core then reports nothing before that (tokens keep accumulating in the sequences).
        self.final_only = False
        if params.seed is not None:
            # Sample i draws from seed + i: reproducible and independent of batch company.
            for seq in self.seqs:
                seq.generator = torch.Generator().manual_seed(params.seed + seq.index)
        # prompt_logprobs: one entry per prompt position (None for the first token).
        self.prompt_logprobs: list[Optional[dict[int, float]]] = []
        self.num_prompt_logprobs_reported = 0
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache
        self.num_preemptions = 0
        self.order = 0  # arrival rank, set by the scheduler; queues are kept sorted by it
        # Beam search state (owned by engine.beam_search): finished hypotheses.
        self.beam_state = None
        # Structured outputs: a RequestGrammar (engine.structured_output), set once compiled.
        self.grammar = None

    def prefix_match_limit(self) -> int:
        """How many leading tokens a prefix-cache lookup may cover: the prompt when siblings will
        share it, else every token; never positions whose prompt logprobs are still needed
        (a cached position computes no logits), so a hit stops where those begin."""
        leader = self.leader
        limit = self.prompt_len if len(self.live_seqs()) > 1 else leader.num_tokens
        if self.params.prompt_logprobs is not None and \
                len(self.prompt_logprobs) < self.prompt_len:
            # Entry p comes from the logits of position p - 1: a hit of h tokens is safe when
            # entries up to h are held (match_prefix leaves at least one token of `limit`).
            limit = min(limit, len(self.prompt_logprobs))
        return limit

    @property
    def leader(self) -> Sequence:
        """The first unfinished sequence: it computes the prompt that its siblings then share."""
        for s in self.seqs:
            if not s.is_finished:
                return s
        return self.seqs[0]

    def live_seqs(self) -> list[Sequence]:
        return [s for s in self.seqs if not s.is_finished]

    def seqs_with_status(self, status: SequenceStatus) -> list[Sequence]:
        return [s for s in self.seqs if s.status == status]

    @property
    def is_finished(self) -> bool:
        for s in self.seqs:  # a loop, not all(genexpr): read for every request every step
            if not s.is_finished:
                return False
        return True

    @property
    def prompt_computed(self) -> bool:
        return self.leader.num_computed_tokens >= self.prompt_len

    def needs_fork(self) -> bool:
        """True once the leader holds the whole prompt's KV and siblings still hold nothing."""
        live = self.live_seqs()
        return (len(live) > 1 and self.prompt_computed and
                any(not s.block_table for s in live[1:]))

    def __repr__(self) -> str:
        return f"Request({self.request_id}, prompt_len={self.prompt_len}, seqs={self.seqs})"
