"""Streaming one choice of a tool-calling chat completion the way OpenAI does: plain text as
`content` deltas; a tool call as `{"index", "id", "type", "function": {"name", "arguments": ""}}`
first, then `{"index", "function": {"arguments": <fragment>}}` pieces.

Named-function outputs are the arguments themselves, so they stream as they are generated.
`required` and `auto` outputs are parsed when the choice finishes (text before an auto
parser's start marker streams as content at once).
"""
from __future__ import annotations

from typing import Any, Optional

from server.tool_calling import ToolPlan
from server.tool_parsers.base import tool_call_id


class ToolCallStreamer:
    def __init__(self, plan: ToolPlan):
        self.plan = plan
        self.text = ""
        self.sent = 0  # characters of `text` already sent as content
        self.header_sent = False
        self.called = False  # finish_reason becomes "tool_calls"

    def delta(self, new_text: str, finished: bool) -> list[dict[str, Any]]:
        """Delta messages for this piece of the choice's text."""
        self.text += new_text
        plan = self.plan
        if plan.mode == "named":
            out = []
            if not self.header_sent:
                self.header_sent = self.called = True
                out.append({"tool_calls": [{"index": 0, "id": tool_call_id(), "type": "function",
                                            "function": {"name": plan.function_name,
                                                         "arguments": ""}}]})
            if new_text:
                out.append({"tool_calls": [{"index": 0, "function": {"arguments": new_text}}]})
            return out
        if plan.mode not in ("required", "auto"):
            return [{"content": new_text}] if new_text else []
        out = []
        if plan.mode == "auto":
            safe = len(self.text) if finished else plan.parser.content_end(self.text)
            if safe > self.sent and not finished:
                out.append({"content": self.text[self.sent:safe]})
                self.sent = safe
        if not finished:
            return out
        content, calls = plan.extract(self.text)
        if not calls:
            if len(self.text) > self.sent:
                out.append({"content": self.text[self.sent:]})
            return out
        self.called = True
        if content and self.sent == 0:
            out.append({"content": content})
        for i, c in enumerate(calls):
            out.append({"tool_calls": [{"index": i, "id": c.id, "type": "function",
                                        "function": {"name": c.name, "arguments": ""}}]})
            out.append({"tool_calls": [{"index": i, "function": {"arguments": c.arguments}}]})
        return out

    def finish_reason(self, reason: Optional[str]) -> Optional[str]:
        return "tool_calls" if reason == "stop" and self.called else reason
