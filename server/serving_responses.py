"""POST /v1/responses: OpenAI's Responses API, stateless (nothing is stored).

`input` (a string or a list of messages and function-tool round trips) and `instructions` (a
leading system message) go through the chat template; function `tools` and `tool_choice` work as
on chat (server/responses_tools.py). The answer is output items (server/responses_output.py): an
assistant `message` holding one `output_text` part and/or `function_call` items. Streaming sends
typed server-sent events (`event: <type>` + JSON data carrying `type` and `sequence_number`):
response.created, response.in_progress, then per item response.output_item.added, its deltas
and .done events, and response.completed (or response.incomplete). Fields that need state are
400s naming them.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, AsyncIterator, Optional

from fastapi.responses import JSONResponse, StreamingResponse

from engine.output_processor import DeltaTracker
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.structured_output import StructuredOutputsParams
from server.engine_client import EngineClient, RequestStream
from server.errors import APIError, EngineDeadError, bad_request, engine_unavailable, \
    from_value_error
from server.protocol_responses import ResponseRequest
from server.responses_output import ResponseOutput
from server.responses_tools import input_messages, plan_response_tools
from server.serving_base import OpenAIServing, ServingOptions, close_all, last_output
from server.serving_chat import render_chat
from server.structured_request import format_constraint, with_tool_grammar
from server.tool_calling import ToolPlan


def _check_supported(req: ResponseRequest) -> None:
    """400 for every field whose meaning this stateless server cannot honour."""
    if req.previous_response_id is not None:
        raise bad_request("previous_response_id: this server keeps no state between requests "
                          "(stateless Responses API); send the whole conversation as `input`",
                          "previous_response_id")
    if req.store:
        raise bad_request("store: this server keeps no state (stateless Responses API); "
                          "set store to false or leave it out", "store")
    if req.background:
        raise bad_request("background: not supported (responses are not stored)", "background")
    extra = [k for k in (req.text or {}) if k != "format"]
    if extra:
        raise bad_request(f"text.{extra[0]}: not supported", f"text.{extra[0]}")
    if req.reasoning:
        raise bad_request("reasoning: not supported", "reasoning")
    if req.include:
        raise bad_request(f"include: {req.include[0]!r} is not supported", "include")
    if req.truncation == "auto":
        raise bad_request("truncation: only 'disabled' is supported (a prompt longer than the "
                          "context is a 400)", "truncation")


def _text_format(req: ResponseRequest) -> Optional[StructuredOutputsParams]:
    """`text.format`: text (no constraint), json_object, or json_schema (Responses' flat shape:
    `{"type": "json_schema", "name", "schema", "strict"}`) -> the output constraint."""
    fmt = (req.text or {}).get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise bad_request("text.format: must be an object", "text.format")
    return format_constraint(fmt.get("type"), fmt.get("schema"), "text.format")


class OpenAIServingResponses(OpenAIServing):

    def __init__(self, engine: EngineClient, served_model_names: list[str],
                 max_queue_len: Optional[int] = None, chat_template: Optional[str] = None,
                 enable_auto_tool_choice: bool = False, tool_call_parser: Optional[str] = None,
                 options: Optional[ServingOptions] = None):
        super().__init__(engine, served_model_names, max_queue_len, options)
        self.chat_template = chat_template
        self.enable_auto_tool_choice = enable_auto_tool_choice
        self.tool_call_parser = tool_call_parser

    async def create(self, req: ResponseRequest):
        self.check_model(req.model)
        _check_supported(req)
        try:
            structured = _text_format(req)
        except ValueError as exc:
            raise bad_request(str(exc), "text.format") from exc
        plan = plan_response_tools(req, self.enable_auto_tool_choice, self.tool_call_parser)
        structured = with_tool_grammar(structured, plan.structured if plan else None)
        self.require_tokenizer("input")
        if req.max_output_tokens is not None and req.max_output_tokens < 1:
            raise bad_request(f"max_output_tokens: must be at least 1, got "
                              f"{req.max_output_tokens}", "max_output_tokens")
        prompt = render_chat(self.tokenizer, input_messages(req), self.chat_template,
                             tools=plan.tools if plan else None)
        try:
            prompt_ids = await self.engine.tokenize(prompt, add_special_tokens=False,
                                                    check_length=True, field="input")
        except ValueError as exc:
            raise from_value_error(exc, "input") from exc
        max_tokens = req.max_output_tokens
        if max_tokens is None:
            max_tokens = self.max_tokens_default(len(prompt_ids), 1)
        # The request sets temperature and top_p at most; the model's generation config
        # defaults fill the rest (top_k, min_p, repetition_penalty) as on chat.
        sampling = self.defaults.sampling(temperature=req.temperature, top_p=req.top_p)
        try:
            params = SamplingParams(**sampling, max_tokens=max_tokens,
                                    structured_outputs=structured)
        except ValueError as exc:
            err = from_value_error(exc)
            if err.param == "max_tokens":
                err.param = "max_output_tokens"
            raise err from exc
        rid = f"resp_{uuid.uuid4().hex}"
        streams = await self.submit([rid], [(prompt, prompt_ids)], params, "input")
        shell = self._shell(req, rid, params)
        if req.stream:
            return StreamingResponse(self._stream(shell, streams[0], plan),
                                     media_type="text/event-stream")
        try:
            final = await last_output(streams[0])
        finally:
            close_all(streams)
        output = ResponseOutput(plan)
        c = final.outputs[0]
        output.feed(c.text, True)
        output.finish(c.finish_reason)
        return JSONResponse(self._finish(shell, final, output.items))

    def _shell(self, req: ResponseRequest, rid: str, params: SamplingParams) -> dict[str, Any]:
        """The response object before any output (what response.created carries)."""
        return {
            "id": rid, "object": "response", "created_at": int(time.time()),
            "status": "in_progress", "error": None, "incomplete_details": None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "model": self.model_name, "output": [],
            "parallel_tool_calls": req.parallel_tool_calls is not False,
            "previous_response_id": None, "reasoning": None, "store": False,
            "temperature": params.temperature, "top_p": params.top_p,
            "text": {"format": (req.text or {}).get("format") or {"type": "text"}},
            "tool_choice": req.tool_choice or "auto", "tools": req.tools or [],
            "truncation": "disabled", "usage": None, "user": req.user,
            "metadata": req.metadata or {},
        }

    def _finish(self, shell: dict[str, Any], out: RequestOutput,
                items: list[dict[str, Any]]) -> dict[str, Any]:
        c = out.outputs[0]
        incomplete = c.finish_reason == "length"
        body = dict(shell)
        body["status"] = "incomplete" if incomplete else "completed"
        body["incomplete_details"] = {"reason": "max_output_tokens"} if incomplete else None
        body["output"] = items
        n_in, n_out = len(out.prompt_token_ids), len(c.token_ids)
        body["usage"] = {"input_tokens": n_in,
                         "input_tokens_details": {"cached_tokens": out.num_cached_tokens},
                         "output_tokens": n_out,
                         "output_tokens_details": {"reasoning_tokens": 0},
                         "total_tokens": n_in + n_out}
        return body

    async def _stream(self, shell: dict[str, Any], stream: RequestStream,
                      plan: Optional[ToolPlan]) -> AsyncIterator[str]:
        seq = 0

        def event(kind: str, **data: Any) -> str:
            nonlocal seq
            payload = {"type": kind, "sequence_number": seq, **data}
            seq += 1
            return (f"event: {kind}\n"
                    f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n")

        output = ResponseOutput(plan)
        try:
            yield event("response.created", response=shell)
            yield event("response.in_progress", response=shell)
            final: Optional[RequestOutput] = None
            tracker = DeltaTracker(1)
            async for out in stream:
                for d in tracker.update(out):
                    for kind, data in output.feed(d.text, d.finish_reason is not None):
                        yield event(kind, **data)
                if out.finished:
                    final = out
            assert final is not None, "a stream ends with a finished output"
            for kind, data in output.finish(final.outputs[0].finish_reason):
                yield event(kind, **data)
            body = self._finish(shell, final, output.items)
            kind = "response.completed" if body["status"] == "completed" \
                else "response.incomplete"
            yield event(kind, response=body)
        except Exception as exc:  # headers are sent: report in-band, then end the stream
            err = exc if isinstance(exc, APIError) else engine_error(exc)
            yield event("error", code=err.code, message=err.message, param=err.param)
        finally:
            close_all([stream])


def engine_error(exc: BaseException) -> APIError:
    if isinstance(exc, EngineDeadError):
        return engine_unavailable(str(exc))
    return APIError(500, f"Internal server error: {exc!r}", "server_error", None,
                    "internal_error")

