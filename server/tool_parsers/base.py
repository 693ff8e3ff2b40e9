"""What a tool-call parser returns, and the base every parser (one file each) implements."""
from __future__ import annotations

import json
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Optional


def tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ParsedToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=tool_call_id)

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ExtractedToolCalls:
    tool_calls: list[ParsedToolCall]
    content: Optional[str]  # text outside the calls (None when there is none)

    @property
    def tools_called(self) -> bool:
        return bool(self.tool_calls)


def arguments_text(args: Any) -> str:
    """Arguments as JSON text (models write an object; some write it already as a string)."""
    if isinstance(args, str):
        return args
    return json.dumps(args if args is not None else {}, ensure_ascii=False)


def call_from_obj(obj: Any) -> Optional[ParsedToolCall]:
    """{"name", "arguments"|"parameters"} -> a call; None when `obj` is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    return ParsedToolCall(name=obj["name"], arguments=arguments_text(args))


class ToolParser(ABC):
    """Finds tool calls in a model's complete output.

    `start_markers`: text that begins a tool call in this format; while streaming, text from the
    first marker on is held back (it belongs to a call, not to `content`).
    """

    name = "base"
    start_markers: tuple[str, ...] = ()
    # The marker counts only at the very start of the output (JSON/pythonic formats).
    markers_at_start_only = False

    @abstractmethod
    def extract(self, text: str) -> ExtractedToolCalls:
        """The tool calls in a finished output, and the content around them."""

    def content_end(self, text: str) -> int:
        """How much of a partial output is surely plain content (safe to stream)."""
        if self.markers_at_start_only:
            stripped = text.lstrip()
            for m in self.start_markers:
                if stripped.startswith(m) or m.startswith(stripped):
                    return 0
            return len(text)
        end = len(text)
        for m in self.start_markers:
            i = text.find(m)
            if i >= 0:
                end = min(end, i)
                continue
            # A marker may be starting at the end of the text: hold that tail back.
            for k in range(min(len(m) - 1, len(text)), 0, -1):
                if text.endswith(m[:k]):
                    end = min(end, len(text) - k)
                    break
        return end


def decode_json_values(text: str) -> list[Any]:
    """Every top-level JSON value in `text`, in order (separators such as ';' skipped)."""
    dec = json.JSONDecoder()
    out, i = [], 0
    while i < len(text):
        while i < len(text) and text[i] in " \t\r\n;,":
            i += 1
        if i >= len(text):
            break
        try:
            value, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            break
        out.append(value)
    return out
