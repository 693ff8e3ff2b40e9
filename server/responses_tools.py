"""Function tools on /v1/responses, mapped onto chat's tool calling (server/tool_calling.py).

The Responses API spells the same things differently: a tool is flat (`{"type": "function",
"name", "description", "parameters", "strict"}`, not nested under "function"), a named choice is
`{"type": "function", "name"}`, and a tool round trip comes back as input items
(`function_call`, `function_call_output`) instead of assistant `tool_calls` and `tool` messages.
This file translates the request to chat's shapes; the plan (grammar for required / named,
`--tool-call-parser` for auto) and the chat template then work as on chat.

`strict`: required and named choices constrain the arguments to the schema by grammar, so they
are strict whatever the flag says. `auto` parses the model's free output and cannot promise
schema adherence: `strict: true` with `auto` is a 400 (leave it out or set it false).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Optional

from server.errors import bad_request
from server.protocol import ChatMessage
from server.protocol_responses import FunctionCallItem, FunctionCallOutputItem, ResponseRequest
from server.tool_calling import ToolPlan, plan_tools

_FUNCTION_KEYS = ("type", "name", "description", "parameters", "strict")
_CHOICE_SHAPES = "'none', 'auto', 'required' or {\"type\": \"function\", \"name\": ...}"


def _chat_tool(tool: Any, i: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
        raise bad_request(f"tools: tools[{i}] has type {kind!r}; only function tools are "
                          "supported (this server runs no built-in tools)", "tools")
    extra = [k for k in tool if k not in _FUNCTION_KEYS]
    if extra:
        raise bad_request(f"tools: tools[{i}].{extra[0]} is not supported (a Responses "
                          "function tool is flat: type, name, description, parameters, "
                          "strict)", "tools")
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise bad_request(f"tools: tools[{i}].name must be a non-empty string", "tools")
    if tool.get("strict") not in (None, True, False):
        raise bad_request(f"tools: tools[{i}].strict must be a boolean", "tools")
    fn = {k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None}
    return {"type": "function", "function": fn}


def _chat_tool_choice(choice: Any) -> Any:
    if not isinstance(choice, dict):
        return choice  # strings: plan_tools knows them
    if choice.get("type") != "function" or not isinstance(choice.get("name"), str) \
            or set(choice) != {"type", "name"}:
        raise bad_request(f"tool_choice: must be {_CHOICE_SHAPES}", "tool_choice")
    return {"type": "function", "function": {"name": choice["name"]}}


def plan_response_tools(req: ResponseRequest, enable_auto_tool_choice: bool,
                        tool_call_parser: Optional[str]) -> Optional[ToolPlan]:
    """The request's tool plan, with `plan.tools` in chat's shape (what chat templates read);
    None when no tools are involved. 400 naming `tools` or `tool_choice` when invalid."""
    if not req.tools and req.tool_choice in (None, "none", "auto"):
        return None  # OpenAI's default tool_choice is "auto", with or without tools
    tools = [_chat_tool(t, i) for i, t in enumerate(req.tools or [])]
    view = SimpleNamespace(tools=tools, tool_choice=_chat_tool_choice(req.tool_choice),
                           parallel_tool_calls=req.parallel_tool_calls)
    plan = plan_tools(view, enable_auto_tool_choice, tool_call_parser)
    if plan is not None and plan.mode == "auto":
        strict = [i for i, t in enumerate(req.tools) if t.get("strict") is True]
        if strict:
            raise bad_request(f"tools: tools[{strict[0]}].strict is true, but tool_choice "
                              "'auto' parses free output and cannot enforce the schema; use "
                              "tool_choice 'required' or a named function (enforced by "
                              "grammar), or set strict to false", "tools")
    return plan


def input_messages(req: ResponseRequest) -> list[ChatMessage]:
    """`instructions` + `input` as chat messages: function_call items become the tool_calls of
    an assistant message (consecutive calls share one), function_call_output items `tool`
    messages; an output must answer a call made earlier in `input`."""
    out: list[dict[str, Any]] = []
    if req.instructions:
        out.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        out.append({"role": "user", "content": req.input})
        return [ChatMessage(**m) for m in out]
    names: dict[str, str] = {}
    for i, item in enumerate(req.input):
        if isinstance(item, FunctionCallItem):
            names[item.call_id] = item.name
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            if item.call_id not in names:
                raise bad_request(f"input[{i}].call_id: no function_call with call_id "
                                  f"{item.call_id!r} comes before this output",
                                  f"input[{i}].call_id")
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output,
                        "name": names[item.call_id]})
        else:
            role = "system" if item.role == "developer" else item.role
            out.append({"role": role, "content": item.text()})
    return [ChatMessage(**m) for m in out]
