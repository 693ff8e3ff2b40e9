"""Frontend side of the engine: engine-core outputs in, user-facing `RequestOutput`s out.

The engine core reports new token ids (and logprobs) per sequence each step and finishes
sequences on EOS / stop_token_ids / max_tokens. The frontend runs one `OutputProcessor`, which
detokenizes incrementally, matches stop strings (finishing the sequence here and asking the core
to stop it, via `ProcessedOutputs.seqs_to_stop`) and builds cumulative `RequestOutput`s.

Rules the processor keeps:
- While a choice is unfinished its visible `text` never ends with a possibly-partial stop string
  nor a partial multi-byte character, and it only ever grows; a streaming client may therefore
  send `text[len(already_sent):]` at each step (`DeltaTracker` does exactly that).
- A finished choice is frozen: later deltas for it are ignored. A finished request is dropped at
  once; outputs for unknown request ids (aborted or finished) are ignored.
- Stop strings are checked only once a choice has at least `min_tokens` output tokens, and only
  with detokenization on (a tokenizer and `params.detokenize`); otherwise `text` stays "".
- `best_of > n` (parallel sampling, not beam search): nothing is reported until every sequence
  has finished; the final output holds the n best by cumulative logprob, renumbered 0..n-1.
  (Streaming best_of > n is not supported, as in OpenAI's API.)
- Beam search: the core reports finished beams with `replace=True`; their text is decoded whole.
  Only the final output is reported.
- A core error (`EngineCoreOutput.error`) finishes the request's open choices with reason
  "abort" and is surfaced as `RequestOutput.metrics["error"]`.

Streaming with SSE (e.g. the server's asyncio loop)::

    tracker = DeltaTracker(params.n)
    for request_output in outputs_of_this_request:          # cumulative RequestOutputs
        for d in tracker.update(request_output):           # ChoiceDelta, ordered by index
            send_chunk(d.index, d.text, d.token_ids, d.logprobs, d.finish_reason)
        if tracker.finished:                               # every choice sent its finish_reason
            break
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from engine.detokenizer import IncrementalDetokenizer, StopChecker, decode_all
from engine.outputs import (CompletionOutput, EngineCoreOutput, LogprobsDict, RequestOutput,
                            SeqDelta)
from engine.sampling_params import SamplingParams


@dataclass
class ProcessedOutputs:
    """Result of one `OutputProcessor.process_outputs` call."""

    # Cumulative state of each request touched this step (finished ones for the last time).
    request_outputs: list[RequestOutput] = field(default_factory=list)
    # (request id, choice indices) that hit a stop string this step: the core must stop them.
    seqs_to_stop: list[tuple[str, list[int]]] = field(default_factory=list)


class _Choice:
    """One sequence's frontend state. `text` is the full decoded text (cut at a stop string once
    stopped); the last `hold` characters are hidden while unfinished."""

    __slots__ = ("index", "token_ids", "text", "hold", "cumulative_logprob", "logprobs",
                 "finish_reason", "stop_reason", "detok")

    def __init__(self, index: int, detok: Optional[IncrementalDetokenizer], want_logprobs: bool):
        self.index = index
        self.token_ids: list[int] = []
        self.text = ""
        self.hold = 0
        self.cumulative_logprob = 0.0
        self.logprobs: Optional[list[LogprobsDict]] = [] if want_logprobs else None
        self.finish_reason: Optional[str] = None
        self.stop_reason: Union[int, str, None] = None
        self.detok = detok

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def finish(self, reason: str, stop_reason: Union[int, str, None] = None) -> None:
        self.finish_reason, self.stop_reason = reason, stop_reason
        self.hold = 0
        self.detok = None  # frozen from now on

    def to_output(self, index: Optional[int] = None) -> CompletionOutput:
        text = self.text if self.hold == 0 else self.text[:len(self.text) - self.hold]
        return CompletionOutput(
            index=self.index if index is None else index, text=text,
            token_ids=list(self.token_ids), cumulative_logprob=self.cumulative_logprob,
            logprobs=None if self.logprobs is None else list(self.logprobs),
            finish_reason=self.finish_reason, stop_reason=self.stop_reason)


class _RequestState:
    __slots__ = ("request_id", "prompt", "prompt_token_ids", "params", "choices",
                 "prompt_logprobs", "num_cached_tokens", "stop_checker", "error", "tokenizer",
                 "final_only", "reports_progress")

    def __init__(self, request_id: str, prompt: Optional[str], prompt_token_ids: list[int],
                 params: SamplingParams, tokenizer: Any, final_only: bool = False):
        self.request_id = request_id
        self.final_only = final_only
        self.prompt = prompt
        # A tuple: every output gets its own list copy; a tuple of ints is left alone by the
        # cyclic garbage collector once it has seen it.
        self.prompt_token_ids = tuple(prompt_token_ids)
        self.params = params
        self.tokenizer = tokenizer if params.detokenize else None
        # Beam search reports n final beams; parallel sampling runs best_of sequences.
        num = params.n if params.use_beam_search else params.best_of
        self.choices = [_Choice(i, self.new_detokenizer(), params.logprobs is not None)
                        for i in range(num)]
        self.prompt_logprobs: Optional[list[Optional[LogprobsDict]]] = \
            [] if params.prompt_logprobs is not None else None
        self.num_cached_tokens = 0
        self.stop_checker = StopChecker(params.stop_strs, params.include_stop_str_in_output) \
            if params.stop_strs and self.tokenizer is not None else None
        self.error: Optional[str] = None
        # Whether unfinished states are reported (not for beam search, best_of > n, or callers
        # that asked for final results only).
        self.reports_progress = (not final_only and not params.use_beam_search
                                 and params.best_of == params.n)

    def new_detokenizer(self) -> Optional[IncrementalDetokenizer]:
        if self.tokenizer is None:
            return None
        p = self.params
        return IncrementalDetokenizer(self.tokenizer, self.prompt_token_ids,
                                      p.skip_special_tokens, p.spaces_between_special_tokens)

    @property
    def finished(self) -> bool:
        for c in self.choices:
            if c.finish_reason is None:
                return False
        return True

    @property
    def needs_only_final(self) -> bool:
        """True when nothing before the request's end matters to this frontend: it reports no
        progress and has no stop strings to match, so the core may send the outputs at once
        when the request finishes (the detokenizer takes tokens one at a time either way)."""
        return not self.reports_progress and self.stop_checker is None

    def make_output(self) -> RequestOutput:
        finished = self.finished
        choices = self.choices
        p = self.params
        if p.use_beam_search:
            outputs = [c.to_output() for c in choices[:p.n]]
        elif finished and p.best_of > p.n:
            # Stable sort: equal logprobs keep their original order.
            best = sorted(choices, key=lambda c: -c.cumulative_logprob)[:p.n]
            outputs = [c.to_output(index=i) for i, c in enumerate(best)]
        else:
            outputs = [c.to_output() for c in choices]
        metrics: dict = {"error": self.error} if self.error is not None else {}
        return RequestOutput(
            request_id=self.request_id, prompt=self.prompt,
            prompt_token_ids=list(self.prompt_token_ids), outputs=outputs, finished=finished,
            prompt_logprobs=None if self.prompt_logprobs is None else list(self.prompt_logprobs),
            num_cached_tokens=self.num_cached_tokens, metrics=metrics)


class OutputProcessor:
    """Turns `EngineCoreOutput`s into `RequestOutput`s. See the module docstring for the rules.

    `tokenizer=None` (benchmarks with random token ids) keeps every text "" and skips stop
    strings.
    """

    def __init__(self, tokenizer: Any = None):
        self.tokenizer = tokenizer
        self._requests: dict[str, _RequestState] = {}

    def add_request(self, request_id: str, prompt: Optional[str], prompt_token_ids: list[int],
                    params: SamplingParams, final_only: bool = False) -> None:
        """Start tracking a request (before the core can report on it). With `final_only` a
        RequestOutput is built only once the request finishes (offline batch generation)."""
        if request_id in self._requests:
            raise ValueError(f"request_id: {request_id!r} is already in use")
        self._requests[request_id] = _RequestState(request_id, prompt, prompt_token_ids, params,
                                                   self.tokenizer, final_only)

    def abort(self, request_id: str) -> bool:
        """Drop a request's state; its later outputs are ignored. True if it was tracked."""
        return self._requests.pop(request_id, None) is not None

    def has_request(self, request_id: str) -> bool:
        return request_id in self._requests

    def needs_only_final(self, request_id: str) -> bool:
        """Whether the core may report this (tracked) request only once it has finished: the
        `RequestOutput`s built are then the same as with outputs every step."""
        return self._requests[request_id].needs_only_final

    @property
    def num_unfinished_requests(self) -> int:
        return len(self._requests)

    def process_outputs(self, outputs: list[EngineCoreOutput]) -> ProcessedOutputs:
        """Apply one step's core outputs; returns the touched requests' outputs and the
        sequences the core must stop because they hit a stop string."""
        result = ProcessedOutputs()
        for out in outputs:
            state = self._requests.get(out.request_id)
            if state is None:
                continue  # aborted, or already finished by a stop string
            stopped = None
            for d in out.seqs:
                if self._apply_delta(state, d):
                    if stopped is None:
                        stopped = []
                    stopped.append(d.index)
            if out.prompt_logprobs and state.prompt_logprobs is not None:
                state.prompt_logprobs.extend(out.prompt_logprobs)
            if out.num_cached_tokens > state.num_cached_tokens:
                state.num_cached_tokens = out.num_cached_tokens
            if out.error is not None:
                state.error = out.error
            if out.finished or out.error is not None:
                # The core is done with every sequence: close what it did not finish itself.
                for c in state.choices:
                    if not c.finished:
                        self._flush(state, c)
                        c.finish("abort")
            if stopped:
                result.seqs_to_stop.append((out.request_id, stopped))
            if state.finished:
                del self._requests[out.request_id]
                result.request_outputs.append(state.make_output())
            elif state.reports_progress:
                result.request_outputs.append(state.make_output())
        return result

    def _choice(self, state: _RequestState, index: int) -> _Choice:
        while index >= len(state.choices):  # a core reporting more beams than n: keep them
            state.choices.append(_Choice(len(state.choices), state.new_detokenizer(),
                                         state.params.logprobs is not None))
        return state.choices[index]

    def _apply_delta(self, state: _RequestState, d: SeqDelta) -> bool:
        """Update one choice; True when it just hit a stop string and the core must stop it."""
        choices = state.choices
        c = choices[d.index] if d.index < len(choices) else self._choice(state, d.index)
        if c.finish_reason is not None:
            return False  # frozen: e.g. the core's step that raced with our stop
        checker = state.stop_checker
        if c.detok is None and checker is None and not d.replace:
            # No text to build or match (detokenize=False, or no tokenizer): tokens only.
            c.token_ids += d.token_ids
            if c.logprobs is not None and d.logprobs:
                c.logprobs += d.logprobs
            c.cumulative_logprob = d.cumulative_logprob
            if d.finish_reason is not None:
                c.finish(d.finish_reason, d.stop_reason)
            return False
        if d.replace:
            c.token_ids = list(d.token_ids)
            if c.logprobs is not None:
                c.logprobs = list(d.logprobs or [])
            c.text = decode_all(state.tokenizer, state.prompt_token_ids, c.token_ids,
                                state.params.skip_special_tokens,
                                state.params.spaces_between_special_tokens) \
                if state.tokenizer is not None else ""
            new_chars = len(c.text)
            c.detok = None
        else:
            c.token_ids.extend(d.token_ids)
            if c.logprobs is not None and d.logprobs:
                c.logprobs.extend(d.logprobs)
            new_text = ""
            if c.detok is not None:
                new_text = c.detok.append(d.token_ids)
                if d.finish_reason is not None:
                    new_text += c.detok.flush()
            c.text += new_text
            new_chars = len(new_text)
        c.cumulative_logprob = d.cumulative_logprob

        if checker is not None and len(c.token_ids) >= state.params.min_tokens:
            hit = checker.check(c.text, new_chars)
            if hit is not None:
                stop, end = hit
                c.text = c.text[:end]
                c.finish("stop", stop)
                # Only a sequence the core still runs needs stopping there.
                return d.finish_reason is None
        if d.finish_reason is not None:
            c.finish(d.finish_reason, d.stop_reason)
        elif checker is not None:
            c.hold = checker.hold_back(c.text)
        return False

    @staticmethod
    def _flush(state: _RequestState, c: _Choice) -> None:
        if c.detok is not None:
            c.text += c.detok.flush()


@dataclass
class ChoiceDelta:
    """What is new in one choice since the previous `DeltaTracker.update`."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: Optional[list[LogprobsDict]]
    finish_reason: Optional[str] = None
    stop_reason: Union[int, str, None] = None


class DeltaTracker:
    """Streaming helper for one request: cumulative `RequestOutput`s in, per-choice deltas out.

    Each text character, token and logprobs entry is yielded exactly once, in order; each
    choice's finish_reason is yielded exactly once, with (or after) its last text. Choices with
    nothing new are omitted. Not thread-safe; use one per request.
    """

    def __init__(self, num_choices: int):
        self.num_choices = num_choices
        self._sent_chars: dict[int, int] = {}
        self._sent_tokens: dict[int, int] = {}
        self._done: set[int] = set()

    @property
    def finished(self) -> bool:
        """True once every choice has had its finish_reason yielded."""
        return len(self._done) >= self.num_choices

    def update(self, output: RequestOutput) -> list[ChoiceDelta]:
        deltas: list[ChoiceDelta] = []
        for c in sorted(output.outputs, key=lambda o: o.index):
            if c.index in self._done:
                continue
            chars = self._sent_chars.get(c.index, 0)
            toks = self._sent_tokens.get(c.index, 0)
            # Visible text only grows (see module docstring); the guards keep deltas non-negative.
            text = c.text[chars:] if len(c.text) > chars else ""
            token_ids = c.token_ids[toks:]
            logprobs = None if c.logprobs is None else c.logprobs[toks:]
            if not text and not token_ids and c.finish_reason is None:
                continue
            self._sent_chars[c.index] = max(chars, len(c.text))
            self._sent_tokens[c.index] = max(toks, len(c.token_ids))
            if c.finish_reason is not None:
                self._done.add(c.index)
            deltas.append(ChoiceDelta(c.index, text, token_ids, logprobs, c.finish_reason,
                                      c.stop_reason))
        return deltas

    def usage(self, output: RequestOutput) -> dict[str, int]:
        """OpenAI `usage` for the request as of `output`."""
        completion = sum(len(c.token_ids) for c in output.outputs)
        prompt = len(output.prompt_token_ids)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}


__all__ = ["ChoiceDelta", "DeltaTracker", "OutputProcessor", "ProcessedOutputs"]
