"""Hermes / Qwen2.5 style: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks."""
from __future__ import annotations

import json
import re

from server.tool_parsers.base import ExtractedToolCalls, ToolParser, call_from_obj

_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


class HermesToolParser(ToolParser):
    name = "hermes"
    start_markers = ("<tool_call>",)

    def extract(self, text: str) -> ExtractedToolCalls:
        if "<tool_call>" not in text:
            return ExtractedToolCalls([], text)
        calls = []
        for body in _BLOCK.findall(text):
            try:
                call = call_from_obj(json.loads(body.strip()))
            except json.JSONDecodeError:
                call = None
            if call is None:
                return ExtractedToolCalls([], text)  # malformed: the text is content
            calls.append(call)
        content = text[:text.index("<tool_call>")].strip()
        return ExtractedToolCalls(calls, content or None)
