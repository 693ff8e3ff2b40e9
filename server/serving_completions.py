"""POST /v1/completions: prompts as text or token ids (one or many), echo, legacy logprobs, SSE.

A list of prompts becomes one engine request per prompt; choice `index` is
`prompt_index * n + choice_index`, as OpenAI numbers them.
"""
from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Optional

from fastapi.responses import JSONResponse, StreamingResponse

from engine.output_processor import DeltaTracker
from engine.outputs import RequestOutput
from server.engine_client import RequestStream
from server.errors import bad_request
from server.protocol import CompletionLogprobs, CompletionRequest, random_id
from server.serving_base import (SSE_DONE, OpenAIServing, close_all, last_output,
                                 merge_streams, sse, sse_error, usage_dict)

Prompt = tuple[Optional[str], Optional[list[int]]]


def normalize_prompts(prompt: object) -> list[Prompt]:
    """The request's prompt field as a list of (text, token ids) pairs, exactly one set."""
    if isinstance(prompt, str):
        return [(prompt, None)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return [(p, None) for p in prompt]
        if all(isinstance(p, int) for p in prompt):
            return [(None, list(prompt))]
        if all(isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompt):
            return [(None, list(p)) for p in prompt]
    raise bad_request("prompt: must be a non-empty string, list of strings, list of token ids "
                      "or list of token-id lists", "prompt")


class OpenAIServingCompletion(OpenAIServing):

    async def create(self, req: CompletionRequest):
        self.check_model(req.model)
        prompts = normalize_prompts(req.prompt)
        n = req.n if req.n is not None else 1
        if req.stream and req.best_of is not None and req.best_of > n:
            raise bad_request("best_of: cannot be larger than n when streaming", "best_of")
        if req.suffix:
            raise bad_request("suffix: is not supported", "suffix")
        if req.echo:
            self.require_tokenizer("echo")
        score_only = req.max_tokens == 0
        if score_only and not req.echo:
            raise bad_request("max_tokens: 0 generates nothing; it is only allowed with echo=true "
                              "(to return the prompt, e.g. with its logprobs, for scoring)",
                              "max_tokens")
        # Prompt logprobs are computed for echo+logprobs and for vLLM's prompt_logprobs extra.
        wanted = [k for k in ((req.logprobs if req.echo else None), req.prompt_logprobs)
                  if k is not None]
        # max_tokens=0: the engine runs the prompt and samples one token nobody sees (as vLLM).
        # An absent max_tokens is OpenAI's 16; an explicit null takes the model's
        # max_new_tokens (generation config) or else runs to the end of the context.
        max_tokens = req.max_tokens if req.max_tokens is not None else self.defaults.max_tokens
        params = self.make_sampling_params(req, 1 if score_only else max_tokens,
                                           req.logprobs, max(wanted) if wanted else None)
        base = random_id("cmpl")
        streams = await self.submit([f"{base}-{i}" for i in range(len(prompts))], prompts, params,
                              "prompt")
        if req.stream:
            return StreamingResponse(self._stream(req, base, prompts, streams, n),
                                     media_type="text/event-stream")
        try:
            finals = list(await asyncio.gather(*(last_output(s) for s in streams)))
        finally:
            close_all(streams)
        return JSONResponse(self._response(req, base, prompts, finals, n))

    # ---- non-streaming ---------------------------------------------------------------------
    def _response(self, req: CompletionRequest, rid: str, prompts: list[Prompt],
                  finals: list[RequestOutput], n: int) -> dict:
        choices = []
        prompt_tokens = completion_tokens = 0
        gen = req.max_tokens != 0
        as_ids = self.tokens_as_ids(req)
        for p_idx, out in enumerate(finals):
            prompt_tokens += len(out.prompt_token_ids)
            prompt_text = self._prompt_text(prompts[p_idx], out) if req.echo else ""
            plp = self._prompt_logprobs(req, out)
            for c in sorted(out.outputs, key=lambda c: c.index):
                token_ids = c.token_ids if gen else []
                completion_tokens += len(token_ids)
                text = prompt_text + (c.text if gen else "")
                logprobs = None
                if req.logprobs is not None:
                    lp = CompletionLogprobs()
                    if req.echo:
                        self._add_logprobs(lp, out.prompt_token_ids, out.prompt_logprobs,
                                           req.logprobs, 0, as_ids)
                    offset = len(prompt_text) if req.echo else 0
                    self._add_logprobs(lp, token_ids, c.logprobs, req.logprobs, offset, as_ids)
                    logprobs = lp.model_dump()
                choice = {"index": p_idx * n + c.index, "text": text, "logprobs": logprobs,
                          "finish_reason": c.finish_reason if gen else "length",
                          "stop_reason": c.stop_reason if gen else None}
                if plp is not None:
                    choice["prompt_logprobs"] = plp
                choices.append(choice)
        return {"id": rid, "object": "text_completion", "created": int(time.time()),
                "model": self.model_name, "choices": choices,
                "usage": usage_dict(prompt_tokens, completion_tokens)}

    def _prompt_logprobs(self, req: CompletionRequest, out: RequestOutput) -> Optional[list]:
        if req.prompt_logprobs is None:
            return None
        computed = max(req.prompt_logprobs, req.logprobs if req.echo and req.logprobs else 0)
        return self.prompt_logprobs_json(out.prompt_logprobs, req.prompt_logprobs, computed,
                                         self.tokens_as_ids(req))

    def _prompt_text(self, prompt: Prompt, out: RequestOutput) -> str:
        if prompt[0] is not None:
            return prompt[0]
        return self.tokenizer.decode(out.prompt_token_ids, skip_special_tokens=False)

    def _add_logprobs(self, lp: CompletionLogprobs, token_ids: list[int],
                      logprobs: Optional[list], k: int, offset: int, as_ids: bool = False) -> None:
        """Append tokens to the legacy logprobs lists; text offsets continue from `offset`."""
        if lp.text_offset:
            offset = lp.text_offset[-1] + len(lp.tokens[-1])
        for i, tid in enumerate(token_ids):
            pos = logprobs[i] if logprobs is not None and i < len(logprobs) else None
            tok = self.token_str(tid, as_ids)
            lp.tokens.append(tok)
            lp.text_offset.append(offset)
            offset += len(tok)
            if not pos:  # the first prompt token has no logprob
                lp.token_logprobs.append(None)
                lp.top_logprobs.append(None)
                continue
            lp.token_logprobs.append(pos.get(tid))
            top = {self.token_str(t, as_ids): v for t, v in self.top_entries(pos, k)}
            if tid in pos:  # OpenAI lists the sampled token among top_logprobs
                top.setdefault(tok, pos[tid])
            lp.top_logprobs.append(top)

    # ---- streaming -------------------------------------------------------------------------
    async def _stream(self, req: CompletionRequest, rid: str, prompts: list[Prompt],
                      streams: list[RequestStream], n: int) -> AsyncIterator[str]:
        created = int(time.time())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        trackers = [DeltaTracker(n) for _ in streams]
        offsets: dict[int, int] = {}
        echoed: set[int] = set()
        want_lps = req.logprobs is not None
        gen = req.max_tokens != 0
        as_ids = self.tokens_as_ids(req)

        def chunk(index: int, text: str, logprobs: Optional[dict], finish: Optional[str],
                  stop_reason: object = None, prompt_logprobs: Optional[list] = None) -> str:
            choice = {"index": index, "text": text, "logprobs": logprobs,
                      "finish_reason": finish, "stop_reason": stop_reason}
            if prompt_logprobs is not None:
                choice["prompt_logprobs"] = prompt_logprobs
            return sse({"id": rid, "object": "text_completion", "created": created,
                        "model": self.model_name, "choices": [choice]})

        try:
            finals: dict[int, RequestOutput] = {}
            async for p_idx, out in merge_streams(streams):
                prompt_done = out.prompt_logprobs is None or out.finished or \
                    len(out.prompt_logprobs) >= len(out.prompt_token_ids)
                if (req.echo or req.prompt_logprobs is not None) and p_idx not in echoed \
                        and prompt_done:
                    # Sent once the prompt is computed: its logprobs are then complete.
                    echoed.add(p_idx)
                    ptext = self._prompt_text(prompts[p_idx], out) if req.echo else ""
                    plp = self._prompt_logprobs(req, out)
                    for i in range(n):
                        lp = None
                        if want_lps and req.echo:
                            cl = CompletionLogprobs()
                            self._add_logprobs(cl, out.prompt_token_ids, out.prompt_logprobs,
                                               req.logprobs, 0, as_ids)
                            lp = cl.model_dump()
                        offsets[p_idx * n + i] = len(ptext)
                        yield chunk(p_idx * n + i, ptext, lp, None, None, plp)
                for d in trackers[p_idx].update(out):
                    index = p_idx * n + d.index
                    if not gen:  # scoring only: the one engine token is not part of the answer
                        if d.finish_reason:
                            yield chunk(index, "", None, "length")
                        continue
                    lp = None
                    if want_lps:
                        cl = CompletionLogprobs()
                        self._add_logprobs(cl, d.token_ids, d.logprobs, req.logprobs,
                                           offsets.get(index, 0), as_ids)
                        if cl.tokens:
                            offsets[index] = cl.text_offset[-1] + len(cl.tokens[-1])
                        lp = cl.model_dump()
                    yield chunk(index, d.text, lp, d.finish_reason,
                                d.stop_reason if d.finish_reason else None)
                if out.finished:
                    finals[p_idx] = out
            if include_usage:
                prompt_tokens = sum(len(o.prompt_token_ids) for o in finals.values())
                completion_tokens = sum(len(c.token_ids) for o in finals.values()
                                        for c in o.outputs) if gen else 0
                yield sse({"id": rid, "object": "text_completion", "created": created,
                           "model": self.model_name, "choices": [],
                           "usage": usage_dict(prompt_tokens, completion_tokens)})
        except Exception as exc:  # headers are sent: report in-band, then end the stream
            yield sse_error(exc)
        finally:
            close_all(streams)
        yield SSE_DONE

