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


class InputProcessor:
    def __init__(self, model_config: ModelConfig, tokenizer, vocab_size: int,
                 num_gpu_blocks: int, block_size: int):
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.num_gpu_blocks = num_gpu_blocks
        self.block_size = block_size
        self.eos_token_id = self._eos_token_id()

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
        if prompt_token_ids is None:
            if prompt is None:
                raise ValueError("prompt: a prompt or prompt_token_ids is required")
            if not isinstance(prompt, str):
                raise ValueError("prompt: must be a string")
            prompt_token_ids = self.tokenize(prompt, add_special_tokens)
        ids = list(prompt_token_ids)
        if not ids:
            raise ValueError("prompt: the prompt is empty")
        for t in ids:
            if not isinstance(t, int) or not 0 <= t < self.vocab_size:
                raise ValueError(f"prompt_token_ids: token id {t!r} is outside the vocabulary "
                                 f"[0, {self.vocab_size})")
        max_len = self.model_config.max_model_len
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
        sp = params.to_dict()
        sp["max_tokens"] = max_tokens
        return EngineCoreRequest(request_id=request_id, prompt_token_ids=ids, sampling_params=sp,
                                 arrival_time=arrival_time or time.time(),
                                 eos_token_id=self.eos_token_id)
