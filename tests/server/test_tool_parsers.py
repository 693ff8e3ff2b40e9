"""Tool-call parsers (hermes, llama3_json, mistral, pythonic) and the streaming of tool calls,
on fixed model outputs (no model needed)."""
from __future__ import annotations

import json

import pytest

from server.tool_calling import ToolPlan
from server.tool_parsers import TOOL_PARSERS, get_tool_parser
from server.tool_stream import ToolCallStreamer

CASES = {
    "hermes": ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": '
               '"Paris"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": '
               '{"tz": "UTC"}}\n</tool_call>', "Let me check."),
    "llama3_json": ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
                    '{"name": "get_time", "parameters": {"tz": "UTC"}}', None),
    "mistral": ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
                '{"name": "get_time", "arguments": {"tz": "UTC"}}]', None),
    "pythonic": ('[get_weather(city="Paris"), get_time(tz="UTC")]', None),
}
WANT = [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "UTC"})]


@pytest.mark.parametrize("name", sorted(CASES))
def test_parsers_extract_calls(name):
    text, content = CASES[name]
    got = get_tool_parser(name).extract(text)
    assert [(c.name, json.loads(c.arguments)) for c in got.tool_calls] == WANT
    assert got.content == content
    assert all(c.to_openai()["id"].startswith("call_") for c in got.tool_calls)


@pytest.mark.parametrize("name", sorted(CASES))
def test_plain_or_malformed_text_is_content(name):
    parser = get_tool_parser(name)
    for text in ["The weather is nice.", "<tool_call>{not json</tool_call>", "[TOOL_CALLS] ?",
                 "[broken(", '{"no_name": 1}']:
        got = parser.extract(text)
        assert got.tool_calls == [] and got.content == text


def test_mistral_named_form():
    got = get_tool_parser("mistral").extract('[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}')
    assert [(c.name, json.loads(c.arguments)) for c in got.tool_calls] == WANT[:1]


def test_unknown_parser_is_named():
    with pytest.raises(ValueError, match="^tool_call_parser: unknown parser 'nope'"):
        get_tool_parser("nope")
    assert set(TOOL_PARSERS) == {"hermes", "llama3_json", "mistral", "pythonic"}


def _stream(plan: ToolPlan, pieces: list[str]) -> list[dict]:
    st = ToolCallStreamer(plan)
    out = []
    for i, p in enumerate(pieces):
        out += st.delta(p, i == len(pieces) - 1)
    assert st.finish_reason("stop") == ("tool_calls" if st.called else "stop")
    return out


def _reassemble(deltas: list[dict]) -> tuple[str, list[tuple[str, dict]]]:
    content, calls = "", {}
    for d in deltas:
        content += d.get("content") or ""
        for tc in d.get("tool_calls") or []:
            if tc["index"] not in calls:
                assert tc["id"] and tc["function"]["name"] and tc["type"] == "function"
                calls[tc["index"]] = [tc["function"]["name"], ""]
            calls[tc["index"]][1] += tc["function"].get("arguments") or ""
    return content, [(n, json.loads(a)) for n, a in (calls[i] for i in sorted(calls))]


def test_auto_stream_sends_content_before_the_marker_at_once():
    text, _ = CASES["hermes"]
    pieces = [text[i:i + 5] for i in range(0, len(text), 5)]
    deltas = _stream(ToolPlan("auto", [], parser=get_tool_parser("hermes")), pieces)
    content, calls = _reassemble(deltas)
    assert calls == WANT and content.strip() == "Let me check."
    # Content came before any tool-call delta, and nothing of the tags leaked into it.
    assert "<" not in content


def test_auto_stream_without_calls_is_all_content():
    text = "No tools needed <tool but not a tag."
    deltas = _stream(ToolPlan("auto", [], parser=get_tool_parser("hermes")), list(text))
    assert _reassemble(deltas) == (text, [])


def test_named_and_required_streams():
    args = '{"city":"Paris"}'
    deltas = _stream(ToolPlan("named", [], function_name="get_weather"), [args[:5], args[5:]])
    assert _reassemble(deltas) == ("", WANT[:1])
    req = '[{"name":"get_weather","parameters":{"city":"Paris"}},' \
          '{"name":"get_time","parameters":{"tz":"UTC"}}]'
    deltas = _stream(ToolPlan("required", []), [req[:20], req[20:]])
    assert _reassemble(deltas) == ("", WANT)
