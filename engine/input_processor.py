"""Validates and tokenizes a request before it reaches the engine core (and takes any memory)."""
from __future__ import annotations

import time
from typing import Optional

from engine.config import ModelConfig
from engine.outputs import EngineCoreRequest
from engine.sampling_params import SamplingParams


def worst_case_blocks(prompt_len: int, max_tokens: int, num_seqs: int, block_size: int) -> int:
    """Blocks a request can ever hold at once: full prompt blocks shared, the rest per sequence.

    The KV of the last generated token is never written, hence the `- 1`.
    """
    shared = prompt_len // block_size
    tail = prompt_len - shared * block_size + max_tokens - 1
    return shared + num_seqs * -(-tail // block_size)


# A long prompt is first tokenized this many characters per context token (see
# InputProcessor.tokenize_for_context): text is rarely denser than ~4 characters per token.
HEAD_CHARS_PER_TOKEN = 8


def max_tokens_that_fit(prompt_len: int, num_seqs: int, max_model_len: int, block_size: int,
                        num_blocks: int) -> Optional[int]:
    """The largest max_tokens within the context and within what a pool of `num_blocks` can
    ever hold for the request (None when even one token does not fit)."""
    hi = max_model_len - prompt_len
    if hi < 1:
        return None
    if worst_case_blocks(prompt_len, hi, num_seqs, block_size) <= num_blocks:
        return hi
    lo = 0  # invariant: lo fits (or is 0), hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if worst_case_blocks(prompt_len, mid, num_seqs, block_size) <= num_blocks:
            lo = mid
        else:
            hi = mid
    return lo or None


class InputProcessor:
    """Admission: a request that passes `process` can be scheduled (alone, on an empty engine);
    anything else is a ValueError naming the field, before any tokenizing that cannot help."""

    def __init__(self, model_config: ModelConfig, tokenizer, vocab_size: int,
                 num_gpu_blocks: int, block_size: int, max_num_seqs: Optional[int] = None,
                 speculative: bool = False):
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.num_gpu_blocks = num_gpu_blocks
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs  # the scheduler's batch limit on sequences
        self.speculative = speculative  # speculative_config is set
        self.eos_token_id = self._eos_token_id()
        self._max_token_chars: Optional[int] = None

    def check_params(self, params: SamplingParams) -> None:
        """The request's sequences must fit in one batch: the scheduler admits a request whole,
        so one asking for more sequences than max_num_seqs would wait forever (and block the
        FCFS queue behind it)."""
        if self.speculative and params.use_beam_search:
            raise ValueError("use_beam_search: beam search cannot run on an engine started with "
                             "speculative_config")
        if self.max_num_seqs is None or params.num_seqs <= self.max_num_seqs:
            return
        field = "best_of" if params.best_of > params.n else "n"
        what = "beam width" if params.use_beam_search else field
        raise ValueError(f"{field}: the {what} ({params.num_seqs}) exceeds the engine's "
                         f"max_num_seqs ({self.max_num_seqs}), so it could never be scheduled")

    def check_grammar(self, params: SamplingParams) -> None:
        """Compile the request's structured-output spec (cached, in the grammar backend's pool,
        bounded by its timeout): a bad schema / regex / grammar is a ValueError naming the
        request field it came from, before the request reaches the engine core."""
        from engine.structured_output.backend import get_backend
        spec = params.structured_outputs
        if self.tokenizer is None:
            raise ValueError(f"{spec.field}: structured outputs need a tokenizer")
        eos = [self.eos_token_id] if self.eos_token_id is not None else []
        get_backend(self.tokenizer, self.vocab_size, eos).compile(spec)

    def max_token_chars(self) -> int:
        """An upper bound on the characters one token stands for (longest vocabulary entry,
        doubled for normalisers that shrink text); 0 when unknown."""
        if self._max_token_chars is None:
            longest = 0
            try:
                longest = max((len(t) for t in self.tokenizer.get_vocab()), default=0)
            except Exception:  # a tokenizer without a readable vocabulary: no early bound
                pass
            self._max_token_chars = 2 * longest
        return self._max_token_chars

    def tokenize_for_context(self, text: str, add_special_tokens: bool = True,
                             field: str = "prompt") -> list[int]:
        """Token ids of a prompt, refusing early what cannot fit the context.

        Tokenizing megabytes costs seconds and gigabytes, so: text longer than the context times
        the longest vocabulary entry is refused by its length alone; a long text whose first
        HEAD_CHARS_PER_TOKEN * max_model_len characters already tokenize to well over the context
        (a margin covers the word cut at the end of that head) is refused from that head.
        """
        max_len = self.model_config.max_model_len
        per_token = self.max_token_chars()
        if per_token and len(text) > per_token * max_len:
            raise ValueError(
                f"{field}: {len(text)} characters cannot fit this model's maximum context length "
                f"of {max_len} tokens")
        head_chars = HEAD_CHARS_PER_TOKEN * max_len
        if len(text) > head_chars:
            n_head = len(self.tokenize(text[:head_chars], add_special_tokens))
            if n_head > max_len + max_len // 8 + 64:
                raise ValueError(
                    f"{field}: This model's maximum context length is {max_len} tokens, and the "
                    f"first {head_chars} of the {len(text)} characters alone are {n_head} tokens")
        return self.tokenize(text, add_special_tokens)

    def _eos_token_id(self) -> Optional[int]:
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            return int(self.tokenizer.eos_token_id)
        eos = getattr(self.model_config.hf_config, "eos_token_id", None)
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
        return eos

    def tokenize(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("prompt: this engine was started without a tokenizer; "
                             "pass prompt_token_ids")
        return list(self.tokenizer(prompt, add_special_tokens=add_special_tokens).input_ids)

    def process(self, request_id: str, prompt: Optional[str], prompt_token_ids: Optional[list[int]],
                params: SamplingParams, arrival_time: Optional[float] = None,
                add_special_tokens: bool = True) -> EngineCoreRequest:
        """Raises ValueError (message names the field) for anything the engine cannot serve."""
        self.check_params(params)
        max_len = self.model_config.max_model_len
        if params.max_tokens is not None and params.max_tokens >= max_len:
            raise ValueError(
                f"max_tokens: This model's maximum context length is {max_len} tokens. However, "
                f"you requested {params.max_tokens} tokens in the completion alone, which leaves "
                "no room for the prompt.")
        if prompt_token_ids is None:
            if prompt is None:
                raise ValueError("prompt: a prompt or prompt_token_ids is required")
            if not isinstance(prompt, str):
                raise ValueError("prompt: must be a string")
            prompt_token_ids = self.tokenize_for_context(prompt, add_special_tokens)
        ids = list(prompt_token_ids)
        if not ids:
            raise ValueError("prompt: the prompt is empty")
        for t in ids:
            if not isinstance(t, int) or not 0 <= t < self.vocab_size:
                raise ValueError(f"prompt_token_ids: token id {t!r} is outside the vocabulary "
                                 f"[0, {self.vocab_size})")
        n_prompt = len(ids)
        max_tokens = params.max_tokens
        if max_tokens is None:
            max_tokens = max_len - n_prompt
        if n_prompt + max(max_tokens, 1) > max_len or max_tokens < 1:
            raise ValueError(
                f"This model's maximum context length is {max_len} tokens. However, you requested "
                f"{n_prompt + max(max_tokens, 0)} tokens ({n_prompt} in the messages, {max_tokens} "
                "in the completion). Please reduce the length of the messages or completion.")
        blocks = worst_case_blocks(n_prompt, max_tokens, params.num_seqs, self.block_size)
        if blocks > self.num_gpu_blocks:
            raise ValueError(
                f"max_tokens: the request needs up to {blocks} KV blocks ({n_prompt} prompt tokens, "
                f"{max_tokens} new tokens, {params.num_seqs} sequences) but the KV cache holds only "
                f"{self.num_gpu_blocks} blocks of {self.block_size} tokens")
        if params.structured_outputs is not None:
            self.check_grammar(params)
        sp = params.to_dict()
        sp["max_tokens"] = max_tokens
        return EngineCoreRequest(request_id=request_id, prompt_token_ids=ids, sampling_params=sp,
                                 arrival_time=arrival_time or time.time(),
                                 eos_token_id=self.eos_token_id)
