"""What both generation endpoints share: model and capacity checks, request -> SamplingParams,
token strings for logprobs, SSE framing, per-choice streaming deltas and stream merging."""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional

from engine.generation_config import GenerationDefaults
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.structured_output import StructuredOutputsParams
from server.engine_client import EngineClient, RequestStream
from server.errors import (APIError, EngineDeadError, bad_request, error_body,
                           engine_unavailable, from_value_error, model_not_found,
                           too_many_requests)

SSE_DONE = "data: [DONE]\n\n"
MAX_LOGPROBS = 20  # the default of --max-logprobs, as in vLLM

logger = logging.getLogger("pagedserve.server")


@dataclass(frozen=True)
class ServingOptions:
    """Server-wide settings the generation endpoints share (from ServerArgs)."""

    max_logprobs: int = MAX_LOGPROBS  # most logprobs / top_logprobs / prompt_logprobs; -1: vocab
    return_tokens_as_token_ids: bool = False  # default of the request field of that name
    log_requests: bool = False  # one INFO line per engine request (--enable-log-requests)

    def __post_init__(self) -> None:
        if self.max_logprobs < -1:
            raise ValueError(f"max_logprobs: must be >= 0 or -1 (no limit), got "
                             f"{self.max_logprobs}")


def sse(payload: dict[str, Any]) -> str:
    """One server-sent event carrying a JSON object."""
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def sse_error(exc: BaseException) -> str:
    """An error event for a stream whose 200 header is already sent."""
    if isinstance(exc, APIError):
        return sse(error_body(exc.message, exc.type, exc.param, exc.code))
    if isinstance(exc, EngineDeadError):
        err = engine_unavailable(str(exc))
        return sse(error_body(err.message, err.type, err.param, err.code))
    return sse(error_body(f"Internal server error: {exc!r}", "server_error", None,
                          "internal_error"))


class OpenAIServing:
    """Base of the endpoint handlers: one served model behind one engine client."""

    def __init__(self, engine: EngineClient, served_model_names: list[str],
                 max_queue_len: Optional[int] = None, options: Optional[ServingOptions] = None):
        self.engine = engine
        self.served_model_names = served_model_names
        self.max_queue_len = max_queue_len
        self.options = options or ServingOptions()
        self._token_strs: dict[int, str] = {}

    @property
    def defaults(self) -> GenerationDefaults:
        """The served model's sampling defaults (--generation-config)."""
        return (getattr(self.engine.model_config, "generation_defaults", None)
                or GenerationDefaults())

    def vocab_size(self) -> int:
        return (len(self.tokenizer) if self.tokenizer is not None
                else self.engine.input_processor.vocab_size)

    @property
    def max_logprobs(self) -> int:
        """--max-logprobs (-1: the whole vocabulary)."""
        limit = self.options.max_logprobs
        return self.vocab_size() if limit == -1 else limit

    def tokens_as_ids(self, req: Any) -> bool:
        """The request's return_tokens_as_token_ids, or the server's default when unset."""
        asked = getattr(req, "return_tokens_as_token_ids", None)
        return self.options.return_tokens_as_token_ids if asked is None else asked

    def max_tokens_default(self, prompt_len: int, num_seqs: int) -> Optional[int]:
        """max_tokens for a request that sets none: the generation config's max_new_tokens,
        within what fits the context and the KV pool (None when not even one token fits)."""
        fit = self.engine.default_max_tokens(prompt_len, num_seqs)
        default = self.defaults.max_tokens
        if fit is None or default is None:
            return fit
        return min(fit, default)

    @property
    def model_name(self) -> str:
        return self.served_model_names[0]

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def require_tokenizer(self, field: str) -> None:
        """400 naming `field` when the server runs without a tokenizer (--skip-tokenizer-init)."""
        if self.tokenizer is None:
            raise bad_request(f"{field}: needs a tokenizer, and this server was started with "
                              "--skip-tokenizer-init (send prompts as token ids)", field)

    def check_model(self, model: Optional[str]) -> None:
        """A missing model means the served one (as vLLM); an unknown name is a 404."""
        if model is not None and model not in self.served_model_names:
            raise model_not_found(model)

    def check_capacity(self, num_prompts: int = 1) -> None:
        """503 while the engine cannot serve; 429 when these prompts (each an engine request)
        would leave more than --max-queue-len requests waiting in the engine."""
        problem = self.engine.health_problem()
        if problem is not None:
            raise engine_unavailable(problem)
        if self.max_queue_len is not None:
            waiting = self.engine.num_waiting(num_prompts)
            if waiting > self.max_queue_len:
                raise too_many_requests(waiting, self.max_queue_len)

    def make_sampling_params(self, req: Any, max_tokens: Optional[int], logprobs: Optional[int],
                             prompt_logprobs: Optional[int] = None,
                             tool_grammar: Optional[StructuredOutputsParams] = None
                             ) -> SamplingParams:
        """SamplingParams from the shared request fields; bad values become a 400 naming them.
        `tool_grammar`: the constraint of tool_choice required/named (chat)."""
        from server.structured_request import structured_outputs_from_request, with_tool_grammar
        structured = with_tool_grammar(structured_outputs_from_request(req), tool_grammar)
        if structured is not None:
            self.require_tokenizer(structured.field)
        limit = self.max_logprobs
        if logprobs is not None and logprobs > limit:
            raise bad_request(f"logprobs: at most {limit} are supported, got {logprobs}",
                              "logprobs")
        asked = getattr(req, "prompt_logprobs", None)
        if asked is not None and not 0 <= asked <= limit:
            raise bad_request(f"prompt_logprobs: must be in [0, {limit}], got {asked}",
                              "prompt_logprobs")
        logit_bias = None
        if req.logit_bias:
            logit_bias = {}
            vocab = self.vocab_size()
            for key, value in req.logit_bias.items():
                try:
                    tid = int(key)
                except ValueError:
                    raise bad_request(f"logit_bias: key {key!r} is not a token id", "logit_bias")
                if not 0 <= tid < vocab:
                    raise bad_request(f"logit_bias: token id {tid} is outside the vocabulary "
                                      f"(size {vocab})", "logit_bias")
                logit_bias[tid] = max(-100.0, min(100.0, float(value)))  # finite: validation.py
        if req.stop:  # stop strings are matched on detokenized text
            self.require_tokenizer("stop")
        # Unset (absent or null) fields take the model's defaults; top_k 0 means "off".
        sampling = self.defaults.sampling(
            temperature=req.temperature, top_p=req.top_p,
            top_k=None if req.top_k is None else (req.top_k or -1), min_p=req.min_p,
            repetition_penalty=req.repetition_penalty)
        try:
            return SamplingParams(
                n=1 if req.n is None else req.n, best_of=req.best_of,
                presence_penalty=req.presence_penalty or 0.0,
                frequency_penalty=req.frequency_penalty or 0.0, **sampling, seed=req.seed,
                use_beam_search=req.use_beam_search, length_penalty=req.length_penalty,
                stop=req.stop, stop_token_ids=req.stop_token_ids,
                include_stop_str_in_output=req.include_stop_str_in_output,
                ignore_eos=bool(req.ignore_eos), max_tokens=max_tokens,
                min_tokens=req.min_tokens or 0,
                logprobs=logprobs, prompt_logprobs=prompt_logprobs,
                skip_special_tokens=req.skip_special_tokens,
                spaces_between_special_tokens=req.spaces_between_special_tokens,
                logit_bias=logit_bias, structured_outputs=structured,
            )
        except ValueError as exc:
            raise from_value_error(exc) from exc

    async def submit(self, request_ids: list[str],
                     prompts: list[tuple[Optional[str], Optional[list[int]]]],
                     params: SamplingParams, param_name: str,
                     add_special_tokens: bool = True) -> list[RequestStream]:
        """Add one engine request per prompt; all or none (earlier ones aborted on failure)."""
        self.check_capacity(len(prompts))
        streams: list[RequestStream] = []
        reserved = len(prompts)  # they count as waiting while they are tokenized
        self.engine.reserve(reserved)
        try:
            for rid, (text, ids) in zip(request_ids, prompts):
                streams.append(await self.engine.add_request(rid, text, ids, params,
                                                             add_special_tokens))
                self.engine.reserve(-1)
                reserved -= 1
        except ValueError as exc:
            close_all(streams)
            raise from_value_error(exc, param_name) from exc
        except BaseException:
            close_all(streams)
            raise
        finally:
            self.engine.reserve(-reserved)
        if self.options.log_requests:
            for rid, stream in zip(request_ids, streams):
                self.log_request(rid, stream, params)
        return streams

    @staticmethod
    def log_request(request_id: str, stream: RequestStream, params: SamplingParams) -> None:
        """--enable-log-requests: the request's size and the sampling fields it does not leave
        at their defaults at INFO; its prompt token ids at DEBUG."""
        neutral = SamplingParams().to_dict()
        changed = {k: v for k, v in params.to_dict().items() if v != neutral.get(k)}
        logger.info("Received request %s: %d prompt tokens, params: %s", request_id,
                    len(stream.prompt_token_ids), changed)
        logger.debug("Request %s prompt token ids: %s", request_id, stream.prompt_token_ids)

    def token_str(self, token_id: int, as_id: bool = False) -> str:
        """The text of one token as logprobs show it (cached; vocabularies are fixed);
        `as_id` (return_tokens_as_token_ids) gives vLLM's "token_id:<id>" form."""
        if as_id:
            return f"token_id:{token_id}"
        s = self._token_strs.get(token_id)
        if s is None and self.tokenizer is None:
            return f"token_id:{token_id}"  # no tokenizer: vLLM's form for tokens as ids
        if s is None:
            s = self.tokenizer.decode([token_id], skip_special_tokens=False,
                                      clean_up_tokenization_spaces=False)
            self._token_strs[token_id] = s
        return s

    def top_entries(self, lp: dict[int, float], k: int) -> list[tuple[int, float]]:
        """The k most likely entries of one position's logprobs, most likely first."""
        return sorted(lp.items(), key=lambda kv: -kv[1])[:k]

    def prompt_logprobs_json(self, entries: Optional[list], k: int, computed_k: int,
                             as_ids: bool = False) -> Optional[list]:
        """vLLM's `prompt_logprobs`: per prompt position None (the first) or
        {token id: {logprob, rank, decoded_token}} holding the prompt token and the top `k`.
        The engine computed the top `computed_k` >= k, so ranks within those are exact; a prompt
        token outside them has rank null."""
        if entries is None:
            return None
        out: list = []
        for pos in entries:
            if not pos:
                out.append(None)
                continue
            prompt_token = next(iter(pos))  # the engine puts the prompt token first
            ranked = sorted(pos.items(), key=lambda kv: -kv[1])
            out.append({str(t): {"logprob": v, "rank": i + 1 if i < computed_k else None,
                                 "decoded_token": self.token_str(t, as_ids)}
                        for i, (t, v) in enumerate(ranked) if i < k or t == prompt_token})
        return out


def close_all(streams: list[RequestStream]) -> None:
    """Abort every unfinished stream (client gone, error, or shutdown)."""
    for s in streams:
        s.close()


async def last_output(stream: RequestStream) -> RequestOutput:
    """Drain a stream; its final (cumulative) output."""
    last: Optional[RequestOutput] = None
    async for out in stream:
        last = out
    assert last is not None and last.finished, "a stream ends with a finished output"
    return last


async def merge_streams(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Yield (stream index, output) from several streams as outputs arrive.

    Stops at the first error (re-raised); the caller closes the streams in a `finally`.
    """
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for out in stream:
                queue.put_nowait((i, out))
        except BaseException as exc:  # forwarded to the consumer
            queue.put_nowait((i, exc))
        finally:
            queue.put_nowait((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
