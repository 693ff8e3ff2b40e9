"""POST /v1/chat/completions: chat template, chat logprobs shape, SSE with role-first chunks."""
from __future__ import annotations

import time
from typing import Any, AsyncIterator, Optional

from fastapi.responses import JSONResponse, StreamingResponse

from engine.output_processor import DeltaTracker
from engine.outputs import RequestOutput
from server.engine_client import EngineClient, RequestStream
from server.errors import bad_request, from_value_error
from server.protocol import ChatCompletionRequest, ChatMessage, random_id
from server.serving_base import (SSE_DONE, OpenAIServing, ServingOptions, close_all,
                                 last_output, sse, sse_error, usage_dict)
from server.tool_calling import ToolPlan, plan_tools, template_messages
from server.tool_stream import ToolCallStreamer


def render_chat(tokenizer: Any, messages: list[ChatMessage], chat_template: Optional[str],
                add_generation_prompt: bool = True,
                tools: Optional[list[dict[str, Any]]] = None,
                continue_final_message: bool = False,
                chat_template_kwargs: Optional[dict[str, Any]] = None) -> str:
    """The prompt text for `messages` (with `tools` for templates that show them); APIError 400
    naming the field when the model has no template or the template options do not fit
    together."""
    from engine.chat import apply_chat_template
    try:
        return apply_chat_template(tokenizer, template_messages(messages), chat_template,
                                   add_generation_prompt=add_generation_prompt, tools=tools,
                                   continue_final_message=continue_final_message,
                                   chat_template_kwargs=chat_template_kwargs)
    except ValueError as exc:
        raise from_value_error(exc, "messages") from exc
    except Exception as exc:  # a template error (jinja raise_exception, undefined variable...)
        raise bad_request(f"messages: the chat template failed: {exc}", "messages") from exc


class OpenAIServingChat(OpenAIServing):

    def __init__(self, engine: EngineClient, served_model_names: list[str],
                 max_queue_len: Optional[int] = None, chat_template: Optional[str] = None,
                 enable_auto_tool_choice: bool = False, tool_call_parser: Optional[str] = None,
                 options: Optional[ServingOptions] = None, response_role: str = "assistant"):
        super().__init__(engine, served_model_names, max_queue_len, options)
        self.chat_template = chat_template
        self.enable_auto_tool_choice = enable_auto_tool_choice
        self.tool_call_parser = tool_call_parser
        self.response_role = response_role

    def role(self, req: ChatCompletionRequest) -> str:
        """The role of generated messages, as vLLM: --response-role when the prompt asks the
        model for a new turn, else the role of the message being continued (the last one)."""
        return self.response_role if req.add_generation_prompt else req.messages[-1].role

    async def create(self, req: ChatCompletionRequest):
        self.check_model(req.model)
        n = req.n if req.n is not None else 1
        if req.stream and req.best_of is not None and req.best_of > n:
            raise bad_request("best_of: cannot be larger than n when streaming", "best_of")
        top = req.top_logprobs
        if top is not None and not req.logprobs:
            raise bad_request("top_logprobs: requires logprobs to be true", "top_logprobs")
        if top is not None and not 0 <= top <= self.max_logprobs:
            raise bad_request(f"top_logprobs: must be in [0, {self.max_logprobs}]",
                              "top_logprobs")
        if req.stream and req.prompt_logprobs is not None:
            raise bad_request("prompt_logprobs: not available with stream=true on chat "
                              "completions (as in vLLM)", "prompt_logprobs")
        logprobs = (top or 0) if req.logprobs else None
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None \
            else req.max_tokens
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        if max_tokens is not None and max_tokens < 1:
            raise bad_request(f"{param}: must be at least 1, got {max_tokens}", param)
        self.require_tokenizer("messages")
        plan = plan_tools(req, self.enable_auto_tool_choice, self.tool_call_parser)
        params = self.make_sampling_params(req, max_tokens, logprobs, req.prompt_logprobs,
                                           tool_grammar=plan.structured if plan else None)
        prompt = render_chat(self.tokenizer, req.messages, self.chat_template,
                             req.add_generation_prompt, plan.tools if plan else None,
                             req.continue_final_message, req.chat_template_kwargs)
        # The template already holds any BOS token, as in the offline LLM.chat().
        try:
            prompt_ids = await self.engine.tokenize(prompt, add_special_tokens=False,
                                                    check_length=True, field="messages")
        except ValueError as exc:
            raise from_value_error(exc, "messages") from exc
        if max_tokens is None:
            # OpenAI's default: up to the context length (and what the KV pool can hold), or
            # the model's max_new_tokens (generation config) within that.
            default = self.max_tokens_default(len(prompt_ids), params.num_seqs)
            if default is not None:
                try:
                    params = params.clone(max_tokens=default)
                except ValueError as exc:  # e.g. min_tokens above the default max_tokens
                    raise from_value_error(exc) from exc
        rid = random_id("chatcmpl")
        streams = await self.submit([rid], [(prompt, prompt_ids)], params, "messages")
        if req.stream:
            return StreamingResponse(self._stream(req, rid, streams[0], n, logprobs, plan),
                                     media_type="text/event-stream")
        try:
            final = await last_output(streams[0])
        finally:
            close_all(streams)
        return JSONResponse(self._response(req, rid, final, logprobs, plan))

    def _response(self, req: ChatCompletionRequest, rid: str, out: RequestOutput,
                  logprobs: Optional[int], plan: Optional[ToolPlan] = None) -> dict:
        choices = []
        as_ids = self.tokens_as_ids(req)
        role = self.role(req)
        for c in sorted(out.outputs, key=lambda c: c.index):
            lp = None
            if logprobs is not None:
                lp = {"content": self._logprobs(c.token_ids, c.logprobs, logprobs, as_ids)}
            message: dict[str, Any] = {"role": role, "content": c.text}
            finish_reason = c.finish_reason
            if plan is not None and plan.mode != "none" and c.finish_reason == "stop":
                content, calls = plan.extract(c.text)
                if calls:
                    message = {"role": role, "content": content,
                               "tool_calls": [call.to_openai() for call in calls]}
                    finish_reason = "tool_calls"
            choices.append({"index": c.index, "message": message,
                            "logprobs": lp, "finish_reason": finish_reason,
                            "stop_reason": c.stop_reason})
        completion_tokens = sum(len(c.token_ids) for c in out.outputs)
        body = {"id": rid, "object": "chat.completion", "created": int(time.time()),
                "model": self.model_name, "choices": choices,
                "usage": usage_dict(len(out.prompt_token_ids), completion_tokens)}
        if req.prompt_logprobs is not None:  # vLLM puts them beside the choices
            body["prompt_logprobs"] = self.prompt_logprobs_json(
                out.prompt_logprobs, req.prompt_logprobs, req.prompt_logprobs, as_ids)
        return body

    def _logprobs(self, token_ids: list[int], logprobs: Optional[list[dict[int, float]]],
                  k: int, as_ids: bool = False) -> list[dict]:
        """OpenAI's chat logprobs `content` list: one entry per sampled token."""
        content = []
        for i, tid in enumerate(token_ids):
            pos = logprobs[i] if logprobs is not None and i < len(logprobs) else {}
            tok = self.token_str(tid, as_ids)
            content.append({
                "token": tok, "logprob": pos.get(tid, float("-inf")) if pos else 0.0,
                "bytes": list(tok.encode("utf-8")),
                "top_logprobs": [{"token": self.token_str(t, as_ids), "logprob": v,
                                  "bytes": list(self.token_str(t, as_ids).encode("utf-8"))}
                                 for t, v in self.top_entries(pos, k)],
            })
        return content

    async def _stream(self, req: ChatCompletionRequest, rid: str, stream: RequestStream, n: int,
                      logprobs: Optional[int],
                      plan: Optional[ToolPlan] = None) -> AsyncIterator[str]:
        created = int(time.time())
        tools = plan is not None and plan.mode != "none"
        streamers = [ToolCallStreamer(plan) for _ in range(n)] if tools else []
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        tracker = DeltaTracker(n)
        as_ids = self.tokens_as_ids(req)
        role = self.role(req)

        def chunk(choice: dict) -> str:
            return sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                        "model": self.model_name, "choices": [choice]})

        try:
            for i in range(n):  # the role comes first, once per choice
                yield chunk({"index": i, "delta": {"role": role, "content": ""},
                             "logprobs": None, "finish_reason": None})
            final: Optional[RequestOutput] = None
            async for out in stream:
                for d in tracker.update(out):
                    lp = None
                    if logprobs is not None:
                        lp = {"content": self._logprobs(d.token_ids, d.logprobs, logprobs,
                                                        as_ids)}
                    if tools:
                        st = streamers[d.index]
                        pieces = st.delta(d.text, d.finish_reason is not None)
                        for piece in pieces[:-1]:
                            yield chunk({"index": d.index, "delta": piece, "logprobs": None,
                                         "finish_reason": None})
                        delta = pieces[-1] if pieces else {}
                        reason = st.finish_reason(d.finish_reason)
                        yield chunk({"index": d.index, "delta": delta, "logprobs": lp,
                                     "finish_reason": reason,
                                     "stop_reason": d.stop_reason if reason else None})
                        continue
                    delta = {"content": d.text} if d.text or not d.finish_reason else {}
                    yield chunk({"index": d.index, "delta": delta, "logprobs": lp,
                                 "finish_reason": d.finish_reason,
                                 "stop_reason": d.stop_reason if d.finish_reason else None})
                if out.finished:
                    final = out
            if include_usage and final is not None:
                completion_tokens = sum(len(c.token_ids) for c in final.outputs)
                yield sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                           "model": self.model_name, "choices": [],
                           "usage": usage_dict(len(final.prompt_token_ids), completion_tokens)})
        except Exception as exc:  # headers are sent: report in-band, then end the stream
            yield sse_error(exc)
        finally:
            close_all([stream])
        yield SSE_DONE
