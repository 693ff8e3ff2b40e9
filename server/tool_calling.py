"""Tool calling on /v1/chat/completions: `tools`, `tool_choice`, `parallel_tool_calls`.

- `required` and a named function are enforced by a grammar (structured outputs) built from the
  tools' JSON schemas: named -> the output is that function's arguments object; required -> a
  JSON array of `{"name", "parameters"}` objects, one schema branch per tool.
- `auto` lets the model answer freely and parses its output with the server's
  `--tool-call-parser` (enabled by `--enable-auto-tool-choice`, as in vLLM).
- `none` (or no tools) is plain chat; the tools are still shown to the chat template.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from engine.structured_output import StructuredOutputsParams
from server.errors import bad_request
from server.tool_parsers import ToolParser, get_tool_parser
from server.tool_parsers.base import ParsedToolCall, decode_json_values


@dataclass
class ToolPlan:
    mode: str  # none | auto | required | named
    tools: list[dict[str, Any]]
    function_name: Optional[str] = None  # named mode
    parser: Optional[ToolParser] = None  # auto mode
    structured: Optional[StructuredOutputsParams] = None  # required / named
    parallel: bool = True

    def extract(self, text: str) -> tuple[Optional[str], list[ParsedToolCall]]:
        """(content, tool calls) of a finished choice's text."""
        if self.mode == "named":
            return None, [ParsedToolCall(self.function_name, text.strip())]
        if self.mode == "required":
            values = decode_json_values(text)
            calls = []
            if values and isinstance(values[0], list):
                for obj in values[0]:
                    if isinstance(obj, dict) and isinstance(obj.get("name"), str):
                        calls.append(ParsedToolCall(obj["name"], json.dumps(
                            obj.get("parameters", {}), ensure_ascii=False)))
            return (None, calls) if calls else (text, [])
        if self.mode == "auto" and self.parser is not None:
            got = self.parser.extract(text)
            calls = got.tool_calls if self.parallel else got.tool_calls[:1]
            return (got.content, calls) if calls else (text, [])
        return text, []


def _function(tool: Any, i: int) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type", "function") != "function" \
            or not isinstance(tool.get("function"), dict):
        raise bad_request(f"tools: tools[{i}] must be {{\"type\": \"function\", \"function\": "
                          "{...}} (only function tools are supported)", "tools")
    fn = tool["function"]
    if not isinstance(fn.get("name"), str) or not fn["name"]:
        raise bad_request(f"tools: tools[{i}].function.name must be a non-empty string", "tools")
    params = fn.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise bad_request(f"tools: tools[{i}].function.parameters must be a JSON schema object",
                          "tools")
    return fn


def _params_schema(fn: dict[str, Any]) -> dict[str, Any]:
    return fn.get("parameters") or {"type": "object", "properties": {}}


def plan_tools(req: Any, enable_auto_tool_choice: bool,
               tool_call_parser: Optional[str]) -> Optional[ToolPlan]:
    """The request's tool mode (None: no tools involved); 400 naming the field when invalid."""
    tools, choice = req.tools, req.tool_choice
    if not tools:
        if choice not in (None, "none"):
            raise bad_request("tool_choice: requires a non-empty 'tools' list", "tool_choice")
        if req.parallel_tool_calls is not None and tools is None:
            return None  # OpenAI accepts parallel_tool_calls without tools: nothing to do
        return None
    fns = [_function(t, i) for i, t in enumerate(tools)]
    by_name = {f["name"]: f for f in fns}
    parallel = req.parallel_tool_calls is not False
    if choice is None:
        choice = "auto"
    if isinstance(choice, dict):
        fn = choice.get("function")
        if choice.get("type") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str):
            raise bad_request("tool_choice: must be 'none', 'auto', 'required' or "
                              "{\"type\": \"function\", \"function\": {\"name\": ...}}",
                              "tool_choice")
        name = fn["name"]
        if name not in by_name:
            raise bad_request(f"tool_choice: function {name!r} is not among the tools "
                              f"({', '.join(by_name)})", "tool_choice")
        spec = StructuredOutputsParams(json=_params_schema(by_name[name]), field="tools",
                                       disable_any_whitespace=True)
        return ToolPlan("named", tools, function_name=name, structured=spec, parallel=parallel)
    if choice == "none":
        return ToolPlan("none", tools, parallel=parallel)
    if choice == "required":
        branches = [{"type": "object",
                     "properties": {"name": {"type": "string", "enum": [f["name"]]},
                                    "parameters": _params_schema(f)},
                     "required": ["name", "parameters"], "additionalProperties": False}
                    for f in fns]
        schema: dict[str, Any] = {"type": "array", "minItems": 1,
                                  "items": {"anyOf": branches}}
        if not parallel:
            schema["maxItems"] = 1
        spec = StructuredOutputsParams(json=schema, field="tools", disable_any_whitespace=True)
        return ToolPlan("required", tools, structured=spec, parallel=parallel)
    if choice == "auto":
        if not enable_auto_tool_choice or not tool_call_parser:
            raise bad_request('tool_choice: "auto" tool choice requires --enable-auto-tool-choice '
                              "and --tool-call-parser to be set on the server", "tool_choice")
        return ToolPlan("auto", tools, parser=get_tool_parser(tool_call_parser),
                        parallel=parallel)
    raise bad_request(f"tool_choice: must be 'none', 'auto', 'required' or a named function, "
                      f"got {choice!r}", "tool_choice")


def template_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """Chat messages as chat templates read them: assistant tool_calls with `arguments`
    decoded to objects (templates render them with `tojson`), tool results with their id."""
    out = []
    for i, m in enumerate(messages):
        d: dict[str, Any] = {"role": m.role, "content": m.text()}
        if m.name is not None:
            d["name"] = m.name
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        if m.tool_calls:
            calls = []
            for c in m.tool_calls:
                if not isinstance(c.get("function"), dict) \
                        or not isinstance(c["function"].get("name"), str):
                    raise ValueError(f"messages[{i}].tool_calls: each call needs a 'function' "
                                     "object with a 'name'")
                fn = dict(c["function"])
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        fn["arguments"] = json.loads(args)
                    except json.JSONDecodeError:
                        pass
                calls.append({**c, "function": fn})
            d["tool_calls"] = calls
        out.append(d)
    return out
