"""Llama 3.x JSON style: the output is `{"name": ..., "parameters": {...}}` (optionally after
`<|python_tag|>`), several calls separated by `;`."""
from __future__ import annotations

from server.tool_parsers.base import (ExtractedToolCalls, ToolParser, call_from_obj,
                                      decode_json_values)

_TAG = "<|python_tag|>"


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"
    start_markers = ("{", _TAG)
    markers_at_start_only = True

    def extract(self, text: str) -> ExtractedToolCalls:
        body = text.strip()
        if body.startswith(_TAG):
            body = body[len(_TAG):].lstrip()
        if not body.startswith("{"):
            return ExtractedToolCalls([], text)
        calls = [call_from_obj(v) for v in decode_json_values(body)]
        if not calls or any(c is None for c in calls):
            return ExtractedToolCalls([], text)
        return ExtractedToolCalls(calls, None)
