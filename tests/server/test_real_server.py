"""The real server (uvicorn subprocess, engine core in its own process) on the default model,
driven with the official `openai` package and raw httpx."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from tests.server.conftest import metric_value

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "def fibonacci(n):"]
CHAT = [{"role": "user", "content": "What is 2+2? Answer briefly."}]


@pytest.fixture(scope="module")
def client(default_server):
    return openai.OpenAI(base_url=default_server.base_url + "/v1", api_key="unused",
                         max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def aclient(default_server):
    return openai.AsyncOpenAI(base_url=default_server.base_url + "/v1", api_key="unused",
                              max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def model_name(client) -> str:
    return client.models.list().data[0].id


def metrics(server) -> str:
    return httpx.get(server.base_url + "/metrics", timeout=10).text


def test_models(client, model_name):
    models = client.models.list().data
    assert model_name == "SmolLM2-135M-Instruct" and models[0].owned_by == "pagedserve"


def test_greedy_matches_offline_llm(client, model_name):
    """Greedy text through HTTP equals the offline LLM API's on the same model."""
    from engine import LLM, SamplingParams

    completions = [client.completions.create(model=model_name, prompt=p, max_tokens=12,
                                             temperature=0).choices[0].text for p in PROMPTS]
    chat = client.chat.completions.create(model=model_name, messages=CHAT, max_tokens=12,
                                          temperature=0).choices[0].message.content
    import torch
    torch.set_num_threads(1)  # the server's two processes share this machine's cores
    llm = LLM(device="cpu")
    params = SamplingParams(temperature=0, max_tokens=12)
    offline = [o.outputs[0].text for o in llm.generate(PROMPTS, params, use_tqdm=False)]
    offline_chat = llm.chat(CHAT, params, use_tqdm=False)[0].outputs[0].text
    del llm
    assert completions == offline
    assert chat == offline_chat


def test_completion_stream_equals_non_stream(client, model_name):
    full = client.completions.create(model=model_name, prompt=PROMPTS[0], max_tokens=10,
                                     temperature=0)
    stream = client.completions.create(model=model_name, prompt=PROMPTS[0], max_tokens=10,
                                       temperature=0, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == \
        [full.choices[0].finish_reason]
    assert full.usage.completion_tokens == 10


def test_chat_stream_with_usage(client, model_name):
    stream = client.chat.completions.create(model=model_name, messages=CHAT, max_tokens=8,
                                            stream=True, temperature=0,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 8
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and
                c.choices[0].finish_reason]
    assert len(finishes) == 1 and finishes[0] in ("stop", "length")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    full = client.chat.completions.create(model=model_name, messages=CHAT, max_tokens=8,
                                          temperature=0)
    assert text == full.choices[0].message.content


def test_n2_seed_and_logprobs(client, model_name):
    kw = dict(model=model_name, prompt=PROMPTS[0], max_tokens=6, temperature=1.0, n=2, seed=7,
              logprobs=3)
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]  # same seed, same text
    lp = a.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert all(x <= 0 for x in lp.token_logprobs)
    assert all(1 <= len(t) <= 4 for t in lp.top_logprobs)
    chat = client.chat.completions.create(model=model_name, messages=CHAT, max_tokens=4,
                                          logprobs=True, top_logprobs=2, n=2, temperature=0.7)
    assert len(chat.choices) == 2
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens // 2 or len(content) <= 4
    assert all(len(t.top_logprobs) == 2 for t in content)


def test_stop_strings(client, model_name):
    full = client.completions.create(model=model_name, prompt=PROMPTS[0], max_tokens=12,
                                     temperature=0).choices[0].text
    stop = full.strip().split()[1]  # a word from the middle of the greedy answer
    cut = full[:full.index(stop)]
    out = client.completions.create(model=model_name, prompt=PROMPTS[0], max_tokens=12,
                                    temperature=0, stop=[stop])
    assert out.choices[0].text == cut and out.choices[0].finish_reason == "stop"
    chunks = list(client.completions.create(model=model_name, prompt=PROMPTS[0], max_tokens=12,
                                            temperature=0, stop=[stop], stream=True))
    assert "".join(c.choices[0].text for c in chunks) == cut


def test_beam_search(client, model_name):
    out = client.completions.create(model=model_name, prompt=PROMPTS[0], max_tokens=4, n=2,
                                    temperature=0, extra_body={"use_beam_search": True})
    assert len(out.choices) == 2 and all(c.finish_reason for c in out.choices)


def test_raw_sse_framing(default_server, model_name):
    body = {"model": model_name, "prompt": PROMPTS[1], "max_tokens": 5, "stream": True,
            "n": 2, "temperature": 0.9, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", default_server.base_url + "/v1/completions", json=body,
                      timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(r.iter_raw()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e[len("data: "):]) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    usage = payloads[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 10
    reasons: dict[int, list] = {0: [], 1: []}
    for p in payloads[:-1]:
        (choice,) = p["choices"]
        if choice["finish_reason"]:
            reasons[choice["index"]].append(choice["finish_reason"])
    assert reasons == {0: ["length"], 1: ["length"]}


def test_errors_through_sdk(client, model_name):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x")
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=model_name, prompt="x", max_tokens=100_000)
    assert "maximum context length is 8192 tokens" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=model_name, prompt="x", temperature=-2)
    assert e.value.body["param"] == "temperature"


def test_disconnect_mid_stream_frees_everything(default_server, model_name):
    # n=2: both sequences of the request must stop together.
    body = {"model": model_name, "prompt": "Write a long story about a dragon.",
            "max_tokens": 2000, "ignore_eos": True, "stream": True, "n": 2, "temperature": 0.8}
    with httpx.stream("POST", default_server.base_url + "/v1/completions", json=body,
                      timeout=120) as r:
        lines = r.iter_lines()
        got = 0
        for line in lines:
            if line.startswith("data: "):
                got += 1
                if got == 3:
                    break
        text = metrics(default_server)
        assert metric_value(text, "pagedserve:num_requests_running") == 1
    # Leaving the block closed the connection: the request must be aborted and its blocks freed.
    deadline = time.time() + 3
    while True:
        text = metrics(default_server)
        if (metric_value(text, "pagedserve:num_requests_running") == 0
                and metric_value(text, "pagedserve:kv_cache_usage_perc") == 0):
            break
        assert time.time() < deadline, "the aborted request still holds the engine"
        time.sleep(0.1)


def test_disconnect_non_streaming_aborts(default_server, model_name):
    body = {"model": model_name, "prompt": "Count to one thousand:", "max_tokens": 2000,
            "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(default_server.base_url + "/v1/completions", json=body, timeout=2.5)
    deadline = time.time() + 3
    while metric_value(metrics(default_server), "pagedserve:num_requests_running") != 0:
        assert time.time() < deadline, "the abandoned request still runs"
        time.sleep(0.1)


async def test_200_concurrent_streams(default_server, aclient, model_name):
    before = metrics(default_server)
    ok_before = metric_value(before, "pagedserve:request_success_total",
                             'finished_reason="length"')
    gen_before = metric_value(before, "pagedserve:generation_tokens_total")

    async def one(i: int):
        stream = await aclient.completions.create(model=model_name, prompt=f"Number {i}:",
                                                  max_tokens=4, stream=True,
                                                  temperature=0.8, seed=i,
                                                  extra_body={"ignore_eos": True})
        reasons, text = [], ""
        async for chunk in stream:
            text += chunk.choices[0].text
            if chunk.choices[0].finish_reason:
                reasons.append(chunk.choices[0].finish_reason)
        return reasons, text

    results = await asyncio.gather(*(one(i) for i in range(200)))
    assert all(reasons == ["length"] for reasons, _ in results)
    after = metrics(default_server)
    assert metric_value(after, "pagedserve:request_success_total",
                        'finished_reason="length"') - ok_before == 200
    assert metric_value(after, "pagedserve:generation_tokens_total") - gen_before >= 800
    assert metric_value(after, "pagedserve:num_requests_running") == 0
    assert metric_value(after, "pagedserve:time_to_first_token_seconds_count") >= 200
    assert metric_value(after, "pagedserve:e2e_request_latency_seconds_count") >= 200
