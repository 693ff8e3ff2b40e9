"""Endpoints over the real frontend and a fake core (fast, in process): shapes, SSE, stop strings,
echo, logprobs, n / multiple prompts, tokenize / detokenize / models / version / metrics."""
from __future__ import annotations

import json

import pytest

from server.protocol import (ChatCompletionChunk, ChatCompletionResponse, CompletionResponse,
                             ModelList)
from tests.fixtures_models import gpt2_tokenizer
from tests.server.conftest import CHATML, metric_value


def sse_events(body: str) -> list:
    """Parse an SSE body strictly: every event is `data: ...` followed by a blank line."""
    assert body.endswith("data: [DONE]\n\n"), body[-200:]
    events = body.split("\n\n")
    assert events[-1] == ""
    out = []
    for ev in events[:-1]:
        assert ev.startswith("data: "), ev
        payload = ev[len("data: "):]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    assert out[-1] == "[DONE]" and "[DONE]" not in out[:-1]
    return out[:-1]


def expected_echo(prompt: str, n_tokens: int, offset: int = 0) -> str:
    """The fake core's output: the prompt's tokens again, cyclically."""
    tok = gpt2_tokenizer()
    ids = tok(prompt).input_ids
    return tok.decode([ids[(i + offset) % len(ids)] for i in range(n_tokens)])


async def test_completion_basic(fake_client):
    r = await fake_client.post("/v1/completions",
                               json={"model": "tiny", "prompt": "one two three", "max_tokens": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    CompletionResponse.model_validate(body)  # the documented shape, no stray fields
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == "tiny"
    (choice,) = body["choices"]
    assert choice["text"] == expected_echo("one two three", 5)
    assert choice["finish_reason"] == "length" and choice["index"] == 0
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert r.headers["x-request-id"]


async def test_completion_prompt_forms_and_n(fake_client):
    tok = gpt2_tokenizer()
    ids = tok("alpha beta").input_ids
    r = await fake_client.post("/v1/completions", json={
        "prompt": [ids, tok("gamma delta").input_ids], "max_tokens": 3, "n": 2,
        "temperature": 0.8, "seed": 1, "user": "x"})
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert choices[0]["text"] == expected_echo("alpha beta", 3)
    assert choices[1]["text"] == expected_echo("alpha beta", 3, offset=1)
    assert choices[2]["text"] == expected_echo("gamma delta", 3)
    r = await fake_client.post("/v1/completions",
                               json={"prompt": ["a b", "c d e"], "max_tokens": 2})
    assert [c["text"] for c in r.json()["choices"]] == [expected_echo("a b", 2),
                                                        expected_echo("c d e", 2)]
    assert r.json()["usage"]["prompt_tokens"] == 5


async def test_echo_and_logprobs(fake_client):
    r = await fake_client.post("/v1/completions", json={
        "prompt": "red green blue", "max_tokens": 2, "echo": True, "logprobs": 2})
    assert r.status_code == 200, r.text
    c = r.json()["choices"][0]
    assert c["text"] == "red green blue" + expected_echo("red green blue", 2)
    lp = c["logprobs"]
    assert lp["tokens"] == ["red", " green", " blue", "red", " green"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][3:] == [-0.25, -0.25]
    assert len(lp["top_logprobs"][4]) == 2 and lp["top_logprobs"][4][" green"] == -0.25
    assert lp["text_offset"] == [0, 3, 9, 14, 17]


async def test_chat_basic_and_logprobs(fake_client):
    r = await fake_client.post("/v1/chat/completions", json={
        "model": "tiny", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text",
                                                                          "text": "there"}]}],
        "max_completion_tokens": 4, "logprobs": True, "top_logprobs": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    ChatCompletionResponse.model_validate(body)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    msg = body["choices"][0]["message"]
    assert msg["role"] == "assistant" and isinstance(msg["content"], str)
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 4 == body["usage"]["completion_tokens"]
    assert content[0]["logprob"] == -0.25 and len(content[0]["top_logprobs"]) == 2
    assert content[0]["bytes"] == list(content[0]["token"].encode())


async def test_completion_stream_framing_and_usage(fake_client):
    r = await fake_client.post("/v1/completions", json={
        "prompt": "x y z", "max_tokens": 4, "n": 2, "temperature": 1.0, "stream": True,
        "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    for e in events:
        CompletionResponse.model_validate(e)
    *chunks, usage = events
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 8
    finishes = [(c["choices"][0]["index"], c["choices"][0]["finish_reason"]) for c in chunks
                if c["choices"][0]["finish_reason"]]
    assert sorted(finishes) == [(0, "length"), (1, "length")]
    for i in (0, 1):
        text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"][0]["index"] == i)
        assert text == expected_echo("x y z", 4, offset=i)


async def test_chat_stream_role_first_one_finish(fake_client):
    r = await fake_client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3, "stream": True})
    events = sse_events(r.text)
    for e in events:
        ChatCompletionChunk.model_validate(e)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"][0]["finish_reason"]]
    assert finishes == ["length"]
    assert all("role" not in e["choices"][0]["delta"] for e in events[1:])


@pytest.mark.parametrize("stream", [False, True])
async def test_stop_string_trimmed_and_never_leaked(fake_client, stream):
    # The fake core repeats "a b c d": the stop string " c" must cut the text to "a b".
    r = await fake_client.post("/v1/completions", json={
        "prompt": "a b c d", "max_tokens": 12, "stop": [" c", "zzz"], "stream": stream})
    if stream:
        chunks = sse_events(r.text)
        text = "".join(c["choices"][0]["text"] for c in chunks)
        reasons = [c["choices"][0]["finish_reason"] for c in chunks]
        assert [x for x in reasons if x] == ["stop"]
        assert all(" c" not in c["choices"][0]["text"] for c in chunks)
    else:
        c = r.json()["choices"][0]
        text = c["text"]
        assert c["finish_reason"] == "stop" and c["stop_reason"] == " c"
    assert text == "a b"


async def test_stop_token_ids_and_safe_ignored_field(fake_client):
    tok = gpt2_tokenizer()
    ids = tok("one two three").input_ids
    r = await fake_client.post("/v1/completions", json={
        "prompt": "one two three", "max_tokens": 10, "stop_token_ids": [ids[2]],
        "frequency_penalty": 0.5, "presence_penalty": 0.1, "repetition_penalty": 1.1,
        "top_k": 5, "top_p": 0.9, "min_p": 0.05, "logit_bias": {"11": 2}, "min_tokens": 1,
        "metadata": {"k": "v"}})
    assert r.status_code == 200, r.text
    c = r.json()["choices"][0]
    # As in vLLM, a (non-special) stop token stays in the text.
    assert c["finish_reason"] == "stop" and c["text"] == "one two three"


async def test_models_version_tokenize_detokenize(fake_client):
    r = await fake_client.get("/v1/models")
    data = r.json()
    ModelList.model_validate(data)
    assert data["object"] == "list" and data["data"][0]["id"] == "tiny"
    assert data["data"][0]["max_model_len"] == 256
    assert "version" in (await fake_client.get("/version")).json()
    r = await fake_client.post("/tokenize", json={"prompt": "hello world"})
    assert r.json() == {"count": 2, "max_model_len": 256, "tokens": [31373, 995]}
    r = await fake_client.post("/tokenize", json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200 and r.json()["count"] > 3
    r = await fake_client.post("/detokenize", json={"tokens": [31373, 995]})
    assert r.json() == {"prompt": "hello world"}
    r = await fake_client.post("/detokenize", json={"tokens": [10 ** 7]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"


async def test_health_and_metrics(fake_client):
    assert (await fake_client.get("/health")).status_code == 200
    await fake_client.post("/v1/completions", json={"prompt": "p q", "max_tokens": 3})
    await fake_client.post("/v1/completions", json={"prompt": "a b c d", "max_tokens": 9,
                                                    "stop": " c"})
    text = (await fake_client.get("/metrics")).text
    label = 'model_name="tiny"'
    assert metric_value(text, "pagedserve:request_success_total",
                        'finished_reason="length"') == 1
    assert metric_value(text, "pagedserve:request_success_total", 'finished_reason="stop"') == 1
    assert metric_value(text, "pagedserve:generation_tokens_total", label) >= 5
    assert metric_value(text, "pagedserve:prompt_tokens_total", label) == 6
    assert metric_value(text, "pagedserve:num_requests_running", label) == 0
    assert metric_value(text, "pagedserve:kv_cache_usage_perc", label) == 0
    for hist in ("time_to_first_token_seconds", "e2e_request_latency_seconds",
                 "request_queue_time_seconds", "inter_token_latency_seconds"):
        assert metric_value(text, f"pagedserve:{hist}_count", label) >= 1
    for name in ("num_requests_waiting", "num_requests_swapped", "num_preemptions_total",
                 "prefix_cache_queries_total", "prefix_cache_hits_total"):
        metric_value(text, f"pagedserve:{name}", label)


async def test_stream_never_splits_multibyte_characters(fake_client):
    # GPT-2 splits these characters into byte-level tokens; the fake core streams them one token
    # per step, so partial UTF-8 sequences must be held back until complete.
    prompt = "héllo 你好 🙂 ok"
    tok = gpt2_tokenizer()
    n = len(tok(prompt).input_ids)
    assert n > len(prompt.split())  # really multi-token characters
    r = await fake_client.post("/v1/completions", json={"prompt": prompt, "max_tokens": n,
                                                        "stream": True})
    chunks = [c["choices"][0]["text"] for c in sse_events(r.text)]
    assert all("\ufffd" not in c for c in chunks), chunks
    assert "".join(chunks) == prompt


async def test_bug_is_a_logged_500_with_request_id(fake_app_factory, monkeypatch, caplog):
    import httpx

    from server.serving_completions import OpenAIServingCompletion

    client, _ = await fake_app_factory()

    async def broken(self, req):
        raise RuntimeError("boom")

    monkeypatch.setattr(OpenAIServingCompletion, "create", broken)
    # Starlette re-raises after answering (so servers log it): let the transport swallow it.
    raw = httpx.AsyncClient(transport=httpx.ASGITransport(app=client._transport.app,
                                                          raise_app_exceptions=False),
                            base_url="http://testserver")
    r = await raw.post("/v1/completions", json={"prompt": "x"},
                       headers={"X-Request-Id": "req-42"})
    await raw.aclose()
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["type"] == "server_error" and "req-42" in err["message"]
    assert "boom" not in err["message"]  # internals stay in the log
    assert any("req-42" in rec.getMessage() for rec in caplog.records)


async def test_chat_default_max_tokens_fits_context_and_pool(fake_app_factory):
    client, _ = await fake_app_factory(num_kv_blocks=4, chat_template=CHATML)  # 64 tokens
    r = await client.post("/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert r.json()["choices"][0]["finish_reason"] == "length"
    # The fake echoes forever, so it stops at the pool's limit: 64 KV slots hold 65 tokens
    # (the last sampled token's KV is never written).
    assert usage["total_tokens"] == 65


async def test_best_of_returns_n(fake_client):
    r = await fake_client.post("/v1/completions", json={"prompt": "u v w", "max_tokens": 3,
                                                        "n": 1, "best_of": 3,
                                                        "temperature": 1.0})
    assert r.status_code == 200, r.text
    assert [c["index"] for c in r.json()["choices"]] == [0]
