"""Mistral style: `[TOOL_CALLS]` then a JSON list of `{"name", "arguments"}` objects (or, in
newer templates, `[TOOL_CALLS]name{...args}` per call)."""
from __future__ import annotations

import re

from server.tool_parsers.base import (ExtractedToolCalls, ParsedToolCall, ToolParser,
                                      arguments_text, call_from_obj, decode_json_values)

_MARK = "[TOOL_CALLS]"
_NAMED = re.compile(r"\s*([A-Za-z0-9_\-\.]+)\s*(?:\[ARGS\])?\s*(\{.*)", re.DOTALL)

class MistralToolParser(ToolParser):
    name = "mistral"
    start_markers = (_MARK,)

    def extract(self, text: str) -> ExtractedToolCalls:
        if _MARK not in text:
            return ExtractedToolCalls([], text)
        content = text[:text.index(_MARK)].strip() or None
        parts = [p for p in text.split(_MARK)[1:] if p.strip()]
        calls: list[ParsedToolCall] = []
        for part in parts:
            values = decode_json_values(part)
            if values and isinstance(values[0], list):
                got = [call_from_obj(v) for v in values[0]]
            elif values and isinstance(values[0], dict):
                got = [call_from_obj(v) for v in values]
            else:
                m = _NAMED.match(part)
                got = [None]
                if m:
                    args = decode_json_values(m.group(2))
                    if args and isinstance(args[0], dict):
                        got = [ParsedToolCall(m.group(1), arguments_text(args[0]))]
            if not got or any(c is None for c in got):
                return ExtractedToolCalls([], text)
            calls += got
        return ExtractedToolCalls(calls, content)

