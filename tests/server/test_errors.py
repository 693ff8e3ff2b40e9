"""Every error is an OpenAI error object with the right status, type and param; auth on and off;
429 over --max-queue-len; a bad request never affects the others."""
from __future__ import annotations

import asyncio

import pytest

from tests.server.conftest import CHATML


def assert_error(r, status: int, param=None, code=None, contains: str = "") -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code
    assert contains in err["message"], err["message"]
    return err


@pytest.mark.parametrize("body,param", [
    ({"prompt": "x", "temperature": -1}, "temperature"),
    ({"prompt": "x", "top_p": 1.5}, "top_p"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "n": 2, "temperature": 0}, "n"),
    ({"prompt": "x", "presence_penalty": 5}, "presence_penalty"),
    ({"prompt": "x", "logprobs": 50}, "logprobs"),
    ({"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),  # wrong type: 400, not 422
    ({"prompt": "x", "max_tokens": [1]}, "max_tokens"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": "x", "stream": True, "n": 1, "best_of": 3}, "best_of"),
    ({}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": [10 ** 9]}, "prompt_token_ids"),
])
async def test_completion_param_errors(fake_client, body, param):
    r = await fake_client.post("/v1/completions", json=body)
    assert_error(r, 400, param=param)
    assert r.json()["error"]["type"] == "invalid_request_error"


async def test_chat_param_errors(fake_client):
    msgs = [{"role": "user", "content": "hi"}]
    r = await fake_client.post("/v1/chat/completions", json={"messages": []})
    assert_error(r, 400, param="messages")
    r = await fake_client.post("/v1/chat/completions",
                               json={"messages": [{"role": "wizard", "content": "x"}]})
    assert_error(r, 400, param="messages[0].role")
    r = await fake_client.post("/v1/chat/completions",
                               json={"messages": msgs, "top_logprobs": 3})
    assert_error(r, 400, param="top_logprobs")
    r = await fake_client.post("/v1/chat/completions",
                               json={"messages": msgs, "max_completion_tokens": 0})
    assert_error(r, 400, param="max_completion_tokens")


async def test_malformed_json_and_non_object(fake_client):
    r = await fake_client.post("/v1/completions", content=b'{"prompt": "x",',
                               headers={"content-type": "application/json"})
    assert_error(r, 400, contains="JSON")
    r = await fake_client.post("/v1/completions", json=["not", "an", "object"])
    assert_error(r, 400)


async def test_context_length(fake_client):
    r = await fake_client.post("/v1/completions", json={"prompt": "hello" + " hello" * 199,
                                                        "max_tokens": 100})
    err = assert_error(r, 400, param="prompt", code="context_length_exceeded",
                       contains="This model's maximum context length is 256 tokens. However, "
                                "you requested 300 tokens (200 in the messages, 100 in the "
                                "completion).")
    assert err["type"] == "invalid_request_error"
    r = await fake_client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "hi " * 300}]})
    assert_error(r, 400, param="messages", code="context_length_exceeded",
                 contains="maximum context length is 256 tokens")


async def test_unknown_model_404(fake_client):
    r = await fake_client.post("/v1/completions", json={"model": "gpt-5", "prompt": "x"})
    assert_error(r, 404, param="model", code="model_not_found", contains="gpt-5")
    r = await fake_client.post("/v1/chat/completions", json={
        "model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert_error(r, 404, param="model", code="model_not_found")


async def test_unknown_route_and_method(fake_client):
    assert_error(await fake_client.get("/v1/nothing"), 404)
    assert_error(await fake_client.get("/v1/completions"), 405)


async def test_no_chat_template_400(fake_app_factory):
    client, _ = await fake_app_factory()  # the tiny GPT-2 tokenizer has no chat template
    r = await client.post("/v1/chat/completions",
                          json={"messages": [{"role": "user", "content": "hi"}]})
    assert_error(r, 400, param="messages", contains="no chat template")
    r = await client.post("/v1/completions", json={"prompt": "still fine", "max_tokens": 2})
    assert r.status_code == 200


async def test_core_rejection_is_a_400_not_a_hang(fake_client):
    r = await fake_client.post("/v1/completions", json={"prompt": "x y", "seed": 666})
    assert_error(r, 400, param="seed", contains="rejected by the fake core")


@pytest.mark.parametrize("env", [False, True])
async def test_auth(fake_app_factory, monkeypatch, env):
    if env:
        # The CLI reads PAGEDSERVE_API_KEY when --api-key is not given.
        import argparse
        from server.args import resolve_args
        monkeypatch.setenv("PAGEDSERVE_API_KEY", "s3cret")
        _, sargs = resolve_args(argparse.Namespace(command="serve", config=None,
                                                   model_positional=None))
        assert sargs.api_key == "s3cret"
    client, _ = await fake_app_factory(api_key="s3cret", chat_template=CHATML)
    good = {"Authorization": "Bearer s3cret"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                    {"Authorization": "Basic s3cret"}):
        r = await client.get("/v1/models", headers=headers)
        assert_error(r, 401, code="invalid_api_key")
        r = await client.post("/v1/completions", json={"prompt": "x"}, headers=headers)
        assert_error(r, 401)
        r = await client.post("/tokenize", json={"prompt": "x"}, headers=headers)
        assert_error(r, 401)
        r = await client.post("/detokenize", json={"tokens": [1]}, headers=headers)
        assert_error(r, 401)
    assert (await client.get("/v1/models", headers=good)).status_code == 200
    r = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}, headers=good)
    assert r.status_code == 200
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/metrics")).status_code == 200
    assert (await client.get("/version")).status_code == 200


async def test_auth_off_by_default(fake_client):
    assert (await fake_client.get("/v1/models")).status_code == 200
    r = await fake_client.get("/v1/models", headers={"Authorization": "Bearer anything"})
    assert r.status_code == 200


async def test_queue_limit_429(fake_app_factory, monkeypatch):
    monkeypatch.setenv("FAKE_CORE_STEP_S", "0.05")
    client, engine = await fake_app_factory(max_num_seqs=1, max_queue_len=2)
    body = {"prompt": "a b", "max_tokens": 10}
    results = await asyncio.gather(*(client.post("/v1/completions", json=body)
                                     for _ in range(8)))
    codes = sorted(r.status_code for r in results)
    assert 200 in codes and 429 in codes, codes
    for r in results:
        if r.status_code == 429:
            assert_error(r, 429, code="rate_limit_exceeded")
            assert int(r.headers["retry-after"]) >= 1
        else:
            assert r.json()["choices"][0]["finish_reason"] == "length"
    # Once drained, requests are admitted again.
    assert (await client.post("/v1/completions", json=body)).status_code == 200


async def test_bad_request_does_not_affect_others(fake_client):
    good = {"prompt": "one two", "max_tokens": 6}
    bad = [{"prompt": "x", "top_p": 7}, {"prompt": "hello " * 300}, {"prompt": [-1]},
           {"model": "zzz", "prompt": "x"}]
    results = await asyncio.gather(*[fake_client.post("/v1/completions", json=b)
                                     for b in [good, *bad, good]])
    assert [r.status_code for r in results] == [200, 400, 400, 400, 404, 200]
    assert results[0].json()["choices"][0]["text"] == results[-1].json()["choices"][0]["text"]
