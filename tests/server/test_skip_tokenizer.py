"""`--skip-tokenizer-init`: the server starts without a tokenizer, token-id prompts work (no text
in the outputs), and every field that needs one is a 400 naming it."""
from __future__ import annotations

import json

import httpx
import pytest

from tests.server.conftest import FAKE_CORE


@pytest.fixture
async def client(tiny_gpt2):
    from engine.config import EngineArgs
    from server.api_server import build_app
    from server.args import ServerArgs
    from server.engine_client import AsyncEngineClient
    from server.metrics import ServerMetrics

    cfg = EngineArgs(model=tiny_gpt2, device="cpu", max_model_len=256, num_kv_blocks=64,
                     skip_tokenizer_init=True).create_engine_config()
    metrics = ServerMetrics("tiny")
    engine = AsyncEngineClient(cfg, mode="inproc", core_factory=FAKE_CORE, metrics=metrics,
                               skip_tokenizer_init=True)
    await engine.start()
    assert engine.tokenizer is None
    app = build_app(engine, ServerArgs(log_stats_interval=0), ["tiny"], metrics,
                    manage_engine=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver", timeout=30) as c:
        yield c
    await engine.shutdown()


async def test_token_id_prompts_work(client):
    body = {"prompt": [5, 6, 7], "max_tokens": 4, "logprobs": 1}
    r = await client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert out["choices"][0]["text"] == ""
    assert all(t.startswith("token_id:") for t in out["choices"][0]["logprobs"]["tokens"])

    chunks = []
    async with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    assert sum(len(c["choices"][0]["logprobs"]["tokens"]) for c in chunks if c["choices"]) == 4


@pytest.mark.parametrize("path,body,param", [
    ("/v1/completions", {"prompt": "hello", "max_tokens": 2}, "prompt"),
    ("/v1/completions", {"prompt": [1, 2], "max_tokens": 2, "stop": ["x"]}, "stop"),
    ("/v1/completions", {"prompt": [1, 2], "max_tokens": 2, "echo": True}, "echo"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, "messages"),
    ("/tokenize", {"prompt": "hi"}, "prompt"),
    ("/detokenize", {"tokens": [1, 2]}, "tokens"),
])
async def test_fields_needing_a_tokenizer_are_400(client, path, body, param):
    r = await client.post(path, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and "tokenizer" in err["message"]
