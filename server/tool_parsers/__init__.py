"""Tool-call parsers for `tool_choice="auto"` (`--tool-call-parser NAME`), one file each."""
from __future__ import annotations

from server.tool_parsers.base import ExtractedToolCalls, ParsedToolCall, ToolParser
from server.tool_parsers.hermes import HermesToolParser
from server.tool_parsers.llama3_json import Llama3JsonToolParser
from server.tool_parsers.mistral import MistralToolParser
from server.tool_parsers.pythonic import PythonicToolParser

TOOL_PARSERS: dict[str, type[ToolParser]] = {
    p.name: p for p in (HermesToolParser, Llama3JsonToolParser, MistralToolParser,
                        PythonicToolParser)
}


def get_tool_parser(name: str) -> ToolParser:
    if name not in TOOL_PARSERS:
        raise ValueError(f"tool_call_parser: unknown parser {name!r} (known: "
                         f"{', '.join(sorted(TOOL_PARSERS))})")
    return TOOL_PARSERS[name]()


__all__ = ["ExtractedToolCalls", "ParsedToolCall", "TOOL_PARSERS", "ToolParser",
           "get_tool_parser"]
