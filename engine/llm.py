"""The offline API, with vLLM's names so users' scripts port: `LLM(...).generate(...)`."""
from __future__ import annotations

import contextlib
import gc
import itertools
from typing import Any, Iterator, Optional, Sequence, Union

from engine.chat import apply_chat_template
from engine.config import EngineArgs
from engine.llm_engine import LLMEngine
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams

PromptType = Union[str, dict[str, Any]]


class LLM:
    """An engine for offline batched generation.

    Keyword arguments are `EngineArgs` fields (model, tokenizer, dtype, device, block_size,
    num_kv_blocks, max_model_len, max_num_seqs, max_num_batched_tokens, preemption_mode,
    swap_space, seed, enable_prefix_caching, load_format, ...). `model=None` loads the default
    model, SmolLM2-135M-Instruct. `runner="pooling"` returns an embedding model instead
    (`engine.pooling.llm.PoolingLLM`, with `embed(...)`).
    """

    def __new__(cls, *args: Any, runner: str = "generate", **kwargs: Any):
        if runner == "pooling":
            from engine.pooling.llm import PoolingLLM
            return PoolingLLM(*args, **kwargs)
        if runner != "generate":
            raise ValueError(f"runner: must be 'generate' or 'pooling', got {runner!r}")
        return super().__new__(cls)

    def __init__(self, model: Optional[str] = None, tokenizer: Optional[str] = None,
                 dtype: str = "auto", device: str = "auto", block_size: int = 16,
                 num_kv_blocks: Optional[int] = None, max_model_len: Optional[int] = None,
                 max_num_seqs: Optional[int] = None,
                 max_num_batched_tokens: Optional[int] = None,
                 preemption_mode: str = "recompute", swap_space: float = 4, seed: int = 0,
                 runner: str = "generate", **kwargs: Any):
        known = set(EngineArgs.field_names())
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown engine option (known: {', '.join(sorted(known))})")
        args = EngineArgs(model=model, tokenizer=tokenizer, dtype=dtype, device=device,
                          block_size=block_size, num_kv_blocks=num_kv_blocks,
                          max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                          max_num_batched_tokens=max_num_batched_tokens,
                          preemption_mode=preemption_mode, swap_space=swap_space, seed=seed,
                          **kwargs)
        self.llm_engine = LLMEngine.from_engine_args(args)
        self._ids = itertools.count()

    def get_tokenizer(self):
        return self.llm_engine.get_tokenizer()

    def get_default_sampling_params(self) -> SamplingParams:
        """What `generate` and `chat` use when given no `sampling_params` (vLLM's name): the
        model's generation_config.json sampling defaults (`generation_config="auto"`, merged
        with `override_generation_config`; engine/generation_config.py), else `SamplingParams()`.
        """
        defaults = self.llm_engine.model_config.generation_defaults
        if not defaults.as_dict():
            return SamplingParams()
        kwargs = defaults.sampling()
        if defaults.max_tokens is not None:
            kwargs["max_tokens"] = defaults.max_tokens
        return SamplingParams(**kwargs)

    def shutdown(self) -> None:
        """Stop the engine's tensor-parallel worker processes (they also stop when this process
        exits)."""
        self.llm_engine.core.shutdown()

    def stats(self) -> dict:
        """Engine counters: preemptions, free/total blocks, swapped blocks, cache hits, KV usage."""
        return self.llm_engine.stats()

    def embed(self, *args: Any, **kwargs: Any):
        raise ValueError("runner: embeddings need LLM(model, runner='pooling')")

    def generate(self, prompts: Union[PromptType, Sequence[PromptType], None] = None,
                 sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
                 use_tqdm: bool = True,
                 prompt_token_ids: Optional[list[list[int]]] = None) -> list[RequestOutput]:
        """Generate for each prompt: a string, or a dict with "prompt" or "prompt_token_ids"."""
        items = self._normalize_prompts(prompts, prompt_token_ids)
        return self._run(items, sampling_params, use_tqdm, add_special_tokens=True)

    def chat(self, messages: Union[list[dict], list[list[dict]]],
             sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
             use_tqdm: bool = True, chat_template: Optional[str] = None,
             add_generation_prompt: bool = True) -> list[RequestOutput]:
        """Apply the chat template to one conversation or a list of them, then generate."""
        if not messages:
            raise ValueError("messages: must be a non-empty list")
        conversations = [messages] if isinstance(messages[0], dict) else list(messages)
        template = chat_template or self.llm_engine.model_config.chat_template
        tok = self.get_tokenizer()
        items = [{"prompt": apply_chat_template(tok, conv, template, add_generation_prompt)}
                 for conv in conversations]
        return self._run(items, sampling_params, use_tqdm, add_special_tokens=False)

    @staticmethod
    def _normalize_prompts(prompts, prompt_token_ids) -> list[dict[str, Any]]:
        if prompt_token_ids is not None:
            return [{"prompt_token_ids": list(ids)} for ids in prompt_token_ids]
        if prompts is None:
            raise ValueError("prompts: nothing to generate from")
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        items = []
        for p in prompts:
            if isinstance(p, str):
                items.append({"prompt": p})
            elif isinstance(p, dict) and ("prompt" in p or "prompt_token_ids" in p):
                items.append(p)
            else:
                raise ValueError("prompts: each prompt must be a string or a dict with 'prompt' "
                                 "or 'prompt_token_ids'")
        return items

    def _run(self, items: list[dict[str, Any]], sampling_params, use_tqdm: bool,
             add_special_tokens: bool) -> list[RequestOutput]:
        if sampling_params is None:
            params_list = [self.get_default_sampling_params()] * len(items)
        elif isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(items)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(items):
                raise ValueError(f"sampling_params: got {len(params_list)} for {len(items)} prompts")
        engine = self.llm_engine
        ids: list[str] = []
        try:
            for item, params in zip(items, params_list):
                rid = str(next(self._ids))
                engine.add_request(rid, item.get("prompt"), params,
                                   prompt_token_ids=item.get("prompt_token_ids"),
                                   add_special_tokens=add_special_tokens, final_only=True)
                ids.append(rid)
        except Exception:
            for rid in ids:  # a bad prompt leaves nothing of this call behind
                engine.abort_request(rid)
            raise
        return self._drain(ids, use_tqdm)

    def _drain(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        engine = self.llm_engine
        finished: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm:
            from tqdm import tqdm
            bar = tqdm(total=len(ids), desc="Processed prompts", dynamic_ncols=True)
        try:
            with frozen_gc_heap():
                while engine.has_unfinished_requests():
                    for out in engine.step():
                        if out.finished and out.request_id not in finished:
                            finished[out.request_id] = out
                            if bar is not None:
                                bar.update(1)
        except BaseException:
            for rid in ids:
                if rid not in finished:
                    engine.abort_request(rid)
            raise
        finally:
            if bar is not None:
                bar.close()
        return [finished[rid] for rid in ids]


@contextlib.contextmanager
def frozen_gc_heap() -> Iterator[None]:
    """Keep the objects alive on entry (model, KV block pool, queued requests) out of the cyclic
    garbage collector's passes until exit.

    A full collection otherwise walks the whole startup heap (hundreds of thousands of objects)
    and every queued prompt, which at large batches costs more than a step's host work. Frozen
    objects are still freed by reference counting; cyclic garbage among them is collected after
    exit, when they are unfrozen. Does nothing when the caller froze the heap itself or
    disabled the collector.
    """
    if not gc.isenabled() or gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
