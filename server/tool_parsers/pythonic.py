"""Pythonic style (Llama 3.2/4): `[get_weather(city="Paris"), other(x=1)]`, literal arguments."""
from __future__ import annotations

import ast
import json

from server.tool_parsers.base import ExtractedToolCalls, ParsedToolCall, ToolParser


class PythonicToolParser(ToolParser):
    name = "pythonic"
    start_markers = ("[",)
    markers_at_start_only = True

    def extract(self, text: str) -> ExtractedToolCalls:
        body = text.strip()
        if body.startswith("<|python_start|>"):
            body = body.removeprefix("<|python_start|>").removesuffix("<|python_end|>").strip()
        if not (body.startswith("[") and body.endswith("]")):
            return ExtractedToolCalls([], text)
        try:
            tree = ast.parse(body, mode="eval").body
            if not isinstance(tree, ast.List) or not tree.elts:
                raise ValueError("not a list of calls")
            calls = []
            for node in tree.elts:
                if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) \
                        or node.args:
                    raise ValueError("only name(keyword=literal, ...) calls")
                args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
                calls.append(ParsedToolCall(node.func.id, json.dumps(args, ensure_ascii=False)))
        except (SyntaxError, ValueError):
            return ExtractedToolCalls([], text)
        return ExtractedToolCalls(calls, None)
