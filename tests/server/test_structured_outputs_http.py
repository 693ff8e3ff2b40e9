"""Structured outputs and tool calling over HTTP on the default model, with real clients (the
OpenAI SDK, LangChain's ChatOpenAI): one server for the module, started with the hermes tool
template and `--enable-auto-tool-choice --tool-call-parser hermes`."""
from __future__ import annotations

import asyncio
import json
import re
from typing import Literal, Optional

import httpx
import jsonschema
import pytest
from pydantic import BaseModel, Field

from engine import SamplingParams
from engine.structured_output import StructuredOutputsParams
from tests.engine.structured_output.schemas import SCHEMAS
from tests.server.conftest import REPO, ServerProcess, metric_value

HERMES = REPO / "examples" / "chat_templates" / "tool_chat_template_hermes.jinja"
WEATHER = {"type": "object",
           "properties": {"city": {"type": "string", "maxLength": 12},
                          "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {
             "name": "get_time", "description": "Time in a zone",
             "parameters": {"type": "object", "properties": {"tz": {"enum": ["UTC", "CET"]}},
                            "required": ["tz"], "additionalProperties": False}}}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
JSON_ASK = [{"role": "user", "content": 'Reply with a JSON object with one key "answer" holding '
                                        'one word: is the sky blue?'}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("so_server") / "server.log"
    srv = ServerProcess(["--seed", "0", "--enable-auto-tool-choice", "--tool-call-parser",
                         "hermes", "--chat-template", str(HERMES)], log_path=log)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url + "/v1", timeout=120) as c:
        yield c


def chat(http, **body):
    return http.post("/chat/completions", json={"messages": ASK, "temperature": 0,
                                                "max_tokens": 64, **body})


def test_same_outputs_offline_and_http(http, default_llm):
    cases = [(SCHEMAS[5], 0.0), (SCHEMAS[32], 1.0), (SCHEMAS[3], 1.0)]
    prompts = [f"Write JSON matching this schema: {json.dumps(s)}\n" for s, _ in cases]
    offline = default_llm.generate(prompts, [
        SamplingParams(temperature=t, seed=11, max_tokens=96,
                       structured_outputs=StructuredOutputsParams(json=s)) for s, t in cases],
        use_tqdm=False)
    for k, ((schema, t), prompt, off) in enumerate(zip(cases, prompts, offline)):
        # The three request spellings of the same constraint.
        field = [{"guided_json": schema}, {"structured_outputs": {"json": schema}},
                 {"response_format": {"type": "json_schema",
                                      "json_schema": {"name": "s", "schema": schema}}}][k % 3]
        r = http.post("/completions", json={"prompt": prompt, "temperature": t, "seed": 11,
                                            "max_tokens": 96, **field})
        if "response_format" in field:
            assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["text"] == off.outputs[0].text
        assert choice["finish_reason"] == "stop"
        jsonschema.validate(json.loads(choice["text"]), schema)


def test_regex_choice_and_json_mode(http):
    r = chat(http, guided_regex=r"[0-9]{3}-[0-9]{4}")
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", r.json()["choices"][0]["message"]["content"])
    r = chat(http, structured_outputs={"choice": ["sunny", "rainy"]}, temperature=1.0, n=3)
    assert {c["message"]["content"] for c in r.json()["choices"]} <= {"sunny", "rainy"}
    r = chat(http, response_format={"type": "json_object"}, messages=JSON_ASK)
    assert isinstance(json.loads(r.json()["choices"][0]["message"]["content"]), dict)
    r = chat(http, response_format={"type": "text"}, max_tokens=4)
    assert r.status_code == 200


def test_streamed_constrained_content(http):
    body = {"messages": ASK, "temperature": 0, "max_tokens": 64, "guided_json": SCHEMAS[5]}
    full = http.post("/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    text = ""
    with http.stream("POST", "/chat/completions", json={**body, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                text += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
    assert text == full
    jsonschema.validate(json.loads(text), SCHEMAS[5])


class Weather(BaseModel):
    city: str = Field(max_length=12)
    unit: Literal["celsius", "fahrenheit"]


def test_openai_sdk_parse(server):
    from openai import OpenAI
    client = OpenAI(base_url=server.base_url + "/v1", api_key="none")
    done = client.chat.completions.parse(model="SmolLM2-135M-Instruct", messages=ASK,
                                         response_format=Weather, temperature=0, max_tokens=64)
    assert isinstance(done.choices[0].message.parsed, Weather)


def test_responses_api_text_format_json_schema(server):
    """/v1/responses' `text.format` (its flat json_schema shape) constrains the output too."""
    from openai import OpenAI
    client = OpenAI(base_url=server.base_url + "/v1", api_key="none")
    schema = Weather.model_json_schema()
    resp = client.responses.create(
        model="SmolLM2-135M-Instruct", input="What is the weather in Paris?", temperature=0,
        max_output_tokens=64,
        text={"format": {"type": "json_schema", "name": "weather", "schema": schema,
                         "strict": True}})
    assert resp.status == "completed"
    Weather.model_validate_json(resp.output_text)
    assert resp.text.format.type == "json_schema"


RESPONSES_TOOLS = [{"type": "function", "name": t["function"]["name"],
                    "description": t["function"]["description"],
                    "parameters": t["function"]["parameters"], "strict": True} for t in TOOLS]


def _responses_calls(client, stream: bool, **kw) -> list[tuple[str, str, dict]]:
    """(call_id, name, arguments) of the function_call items, checked against the schemas."""
    body = {"model": "SmolLM2-135M-Instruct", "input": ASK[0]["content"], "temperature": 0,
            "max_output_tokens": 64, "tools": RESPONSES_TOOLS, **kw}
    if stream:
        events = list(client.responses.create(stream=True, **body))
        resp = events[-1].response
        args = {ev.item_id: ev.arguments for ev in events
                if ev.type == "response.function_call_arguments.done"}
        deltas = {}
        for ev in events:
            if ev.type == "response.function_call_arguments.delta":
                deltas[ev.item_id] = deltas.get(ev.item_id, "") + ev.delta
        assert deltas == args == {o.id: o.arguments for o in resp.output
                                  if o.type == "function_call"}
    else:
        resp = client.responses.create(**body)
    assert resp.status == "completed", resp
    schemas = {t["name"]: t["parameters"] for t in RESPONSES_TOOLS}
    calls = [o for o in resp.output if o.type == "function_call"]
    assert calls and all(o.status == "completed" for o in calls)
    for o in calls:
        jsonschema.validate(json.loads(o.arguments), schemas[o.name])
    return [(o.call_id, o.name, json.loads(o.arguments)) for o in calls]


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function",
                                                      "name": "get_weather"}])
def test_responses_api_function_tools(server, tool_choice):
    """Required and named tool_choice on /v1/responses, streamed and not, with the SDK."""
    from openai import OpenAI
    client = OpenAI(base_url=server.base_url + "/v1", api_key="none")
    calls = _responses_calls(client, False, tool_choice=tool_choice)
    streamed = _responses_calls(client, True, tool_choice=tool_choice)
    assert [c[1:] for c in streamed] == [c[1:] for c in calls]
    if isinstance(tool_choice, dict):
        assert [c[1] for c in calls] == ["get_weather"]
    one = _responses_calls(client, False, tool_choice="required", parallel_tool_calls=False)
    assert len(one) == 1


def test_responses_api_tool_round_trip(server, default_llm):
    from openai import OpenAI
    from server.protocol_responses import ResponseRequest
    from server.responses_tools import input_messages
    from server.serving_chat import render_chat
    client = OpenAI(base_url=server.base_url + "/v1", api_key="none")
    (call_id, name, args), = _responses_calls(client, False, tool_choice={
        "type": "function", "name": "get_time"})
    history = [ASK[0], {"type": "function_call", "call_id": call_id, "name": name,
                        "arguments": json.dumps(args)},
               {"type": "function_call_output", "call_id": call_id, "output": "12:00 UTC"}]
    resp = client.responses.create(model="SmolLM2-135M-Instruct", input=history,
                                   tools=RESPONSES_TOOLS, tool_choice="none", temperature=0,
                                   max_output_tokens=8)
    assert [o.type for o in resp.output] == ["message"] and resp.output_text
    # The template saw the tools, the call and its result.
    req = ResponseRequest(input=history, tools=RESPONSES_TOOLS)
    prompt = render_chat(default_llm.get_tokenizer(), input_messages(req), HERMES.read_text(),
                         tools=TOOLS)
    assert '"name": "get_weather"' in prompt and "<tool_response>\n12:00 UTC" in prompt
    assert f'<tool_call>\n{{"name": "get_time", "arguments": {json.dumps(args)}}}' in prompt


def _langchain(server):
    from langchain_openai import ChatOpenAI
    return ChatOpenAI(base_url=server.base_url + "/v1", api_key="none", temperature=0,
                      max_tokens=64, model="SmolLM2-135M-Instruct")


class Reply(BaseModel):
    """A free-form answer (all fields optional: JSON mode has no schema)."""
    answer: Optional[str] = None


def test_langchain_structured_output(server):
    llm = _langchain(server)
    for method in ("json_schema", "function_calling"):
        got = llm.with_structured_output(Weather, method=method).invoke(ASK[0]["content"])
        assert isinstance(got, Weather), method
    got = llm.with_structured_output(Reply, method="json_mode").invoke(JSON_ASK[0]["content"])
    assert isinstance(got, Reply)


@pytest.mark.parametrize("tool_choice", ["required", "get_weather"])
def test_langchain_bind_tools(server, tool_choice):
    llm = _langchain(server).bind_tools(TOOLS, tool_choice=tool_choice)
    msg = llm.invoke(ASK[0]["content"])
    assert msg.tool_calls, msg
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for call in msg.tool_calls:
        if tool_choice != "required":
            assert call["name"] == tool_choice
        jsonschema.validate(call["args"], schemas[call["name"]])


def _stream_tool_calls(http, **body) -> tuple[dict[int, dict], Optional[str]]:
    calls: dict[int, dict] = {}
    finish = None
    with http.stream("POST", "/chat/completions",
                     json={"messages": ASK, "temperature": 0, "max_tokens": 64, "stream": True,
                           **body}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"][0]
            finish = choice["finish_reason"] or finish
            for d in choice["delta"].get("tool_calls") or []:
                if d["index"] not in calls:  # the first fragment: id, type and name
                    assert d["id"] and d["type"] == "function" and d["function"]["name"]
                    calls[d["index"]] = {"name": d["function"]["name"], "arguments": ""}
                calls[d["index"]]["arguments"] += d["function"].get("arguments") or ""
    return calls, finish


FORCED = ('<tool_call>\n\\{"name": "get_time", "arguments": \\{"tz": "UTC"\\}\\}\n'
          '</tool_call>')


@pytest.mark.parametrize("body", [
    {"tool_choice": "required"},
    {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    {"tool_choice": "auto", "guided_regex": FORCED},
], ids=["required", "named", "auto"])
def test_streamed_tool_calls_reassemble(http, body):
    full = chat(http, tools=TOOLS, **body).json()["choices"][0]
    assert full["finish_reason"] == "tool_calls"
    want = [(c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in full["message"]["tool_calls"]]
    assert all(c["id"].startswith("call_") and c["type"] == "function"
               for c in full["message"]["tool_calls"])
    calls, finish = _stream_tool_calls(http, tools=TOOLS, **body)
    assert finish == "tool_calls"
    got = [(calls[i]["name"], json.loads(calls[i]["arguments"])) for i in sorted(calls)]
    assert got == want


def test_auto_round_trip_with_tool_result(http, default_llm):
    from server.protocol import ChatMessage
    from server.serving_chat import render_chat
    first = chat(http, tools=TOOLS, tool_choice="auto", guided_regex=FORCED).json()["choices"][0]
    call = first["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_time"
    assert json.loads(call["function"]["arguments"]) == {"tz": "UTC"}
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": call["id"], "content": "12:00 UTC"}]
    second = http.post("/chat/completions", json={"messages": history, "tools": TOOLS,
                                                  "temperature": 0, "max_tokens": 8})
    assert second.status_code == 200, second.text
    reply = second.json()["choices"][0]
    assert reply["finish_reason"] in ("stop", "length") and "tool_calls" not in reply["message"]
    # The template saw the tools, the call and its result.
    prompt = render_chat(default_llm.get_tokenizer(),
                         [ChatMessage(**m) for m in history], HERMES.read_text(), tools=TOOLS)
    assert '"name": "get_weather"' in prompt and "<tool_response>\n12:00 UTC" in prompt
    assert '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}' in prompt


@pytest.mark.parametrize("body, param", [
    ({"response_format": {"type": "json_schema",
                          "json_schema": {"name": "x", "schema": {"type": "objekt"}}}},
     "response_format"),
    ({"guided_regex": "a(b"}, "guided_regex"),
    ({"structured_outputs": {"grammar": "root ::= nothing"}}, "structured_outputs"),
    ({"structured_outputs": {"jsn": {}}}, "structured_outputs"),
    ({"guided_choice": ["a"], "guided_regex": "a"}, "guided_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [{"type": "retrieval"}], "tool_choice": "required"}, "tools"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"guided_json": SCHEMAS[0], "use_beam_search": True, "n": 2}, "use_beam_search"),
    ({"tools": TOOLS, "tool_choice": "required", "guided_regex": "a"}, "guided_regex"),
])
def test_bad_input_is_400_naming_the_field(http, body, param):
    r = chat(http, **body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()


async def test_auto_tool_choice_needs_the_server_flag(fake_app_factory):
    from tests.server.conftest import CHATML
    client, _ = await fake_app_factory(chat_template=CHATML)
    r = await client.post("/v1/chat/completions", json={"messages": ASK, "tools": TOOLS})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tool_choice"
    assert "--enable-auto-tool-choice" in r.json()["error"]["message"]


# Thousands of alternatives: slow to compile and to match. It may compile or time out (400);
# either way the other requests are unaffected.
PATHOLOGICAL = {"type": "object", "properties": {
    f"k{i}": {"type": "string", "pattern": "^(a|b|ab|ba)*c{2,40}$"} for i in range(60)}}


async def test_concurrent_constrained_and_plain(server, http):
    prompt = "The capital of France is"
    ref = http.post("/completions", json={"prompt": prompt, "temperature": 0,
                                          "max_tokens": 8}).json()["choices"][0]["text"]
    bodies = []
    for i in range(100):
        if i == 50:
            bodies.append({"prompt": "x", "max_tokens": 16, "guided_json": PATHOLOGICAL})
        elif i % 3 == 0:
            bodies.append({"prompt": prompt, "temperature": 0, "max_tokens": 8})
        elif i % 3 == 1:
            bodies.append({"prompt": f"Pick {i}:", "temperature": 1.0, "max_tokens": 8,
                           "guided_choice": ["alpha", "beta", "gamma"]})
        else:
            bodies.append({"prompt": f"Number {i}:", "temperature": 1.0, "max_tokens": 12,
                           "guided_regex": "[0-9]{4}"})
    async with httpx.AsyncClient(base_url=server.base_url + "/v1", timeout=300) as client:
        results = await asyncio.gather(*[client.post("/completions", json=b) for b in bodies])
    for i, (b, r) in enumerate(zip(bodies, results)):
        if i == 50:
            assert r.status_code in (200, 400), r.text
            continue
        assert r.status_code == 200, r.text
        text = r.json()["choices"][0]["text"]
        if "guided_choice" in b:
            assert text in b["guided_choice"]
        elif "guided_regex" in b:
            assert re.fullmatch("[0-9]{4}", text), text
        else:
            assert text == ref
    metrics = httpx.get(server.base_url + "/metrics").text
    assert metric_value(metrics, "pagedserve:kv_cache_usage_perc") == 0.0
