"""--generation-config / --override-generation-config over HTTP (fake core, in process): the
model's sampling defaults fill what chat, completions and responses requests leave unset; what a
request sets (top_k 0, min_p 0.0, ...) wins; null is unset; greedy drops defaulted top-p/k/min-p."""
from __future__ import annotations

import json
import shutil

import pytest

from tests.server.conftest import CHATML

GEN = {"temperature": 0.7, "top_p": 0.9, "top_k": 20, "min_p": 0.05,
       "repetition_penalty": 1.1, "max_new_tokens": 7,
       # not sampling defaults: never read
       "eos_token_id": 50256, "do_sample": True, "max_length": 3}
MSGS = [{"role": "user", "content": "a b c d"}]


@pytest.fixture(scope="module")
def gen_model(tiny_gpt2, tmp_path_factory) -> str:
    """The tiny model with a generation_config.json of sampling defaults (auto mode)."""
    path = tmp_path_factory.mktemp("gen") / "model"
    shutil.copytree(tiny_gpt2, path)
    (path / "generation_config.json").write_text(json.dumps(GEN))
    return str(path)


async def spied(make, **kw):
    """(client, list the SamplingParams of each engine request get appended to)."""
    client, engine = await make(chat_template=CHATML, **kw)
    seen: list = []
    add = engine.add_request

    async def spy(rid, prompt, ids, params, *args, **kwargs):
        seen.append(params)
        return await add(rid, prompt, ids, params, *args, **kwargs)

    engine.add_request = spy
    return client, seen


def sampling(p) -> tuple:
    return (p.temperature, p.top_p, p.top_k, p.min_p, p.repetition_penalty)


DEFAULTED = (0.7, 0.9, 20, 0.05, 1.1)
NEUTRAL = (1.0, 1.0, -1, 0.0, 1.0)


async def test_auto_fills_unset_fields_on_every_endpoint(fake_app_factory, gen_model):
    client, seen = await spied(fake_app_factory, engine_kw={"model": gen_model})
    r = await client.post("/v1/chat/completions", json={"messages": MSGS})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 7
    assert sampling(seen[-1]) == DEFAULTED and seen[-1].max_tokens == 7
    # completions: an absent max_tokens is OpenAI's 16 (as vLLM); an explicit null is unset
    r = await client.post("/v1/completions", json={"prompt": "a b c"})
    assert sampling(seen[-1]) == DEFAULTED and seen[-1].max_tokens == 16
    r = await client.post("/v1/completions", json={"prompt": "a b c", "max_tokens": None})
    assert seen[-1].max_tokens == 7 and r.json()["usage"]["completion_tokens"] == 7
    r = await client.post("/v1/responses", json={"input": "a b c"})
    body = r.json()
    assert r.status_code == 200 and (body["temperature"], body["top_p"]) == (0.7, 0.9)
    assert sampling(seen[-1]) == DEFAULTED and seen[-1].max_tokens == 7
    assert body["usage"]["output_tokens"] == 7


async def test_request_values_win_and_null_is_unset(fake_app_factory, gen_model):
    client, seen = await spied(fake_app_factory, engine_kw={"model": gen_model})
    explicit = {"temperature": 1.0, "top_p": None, "top_k": 0, "min_p": 0.0,
                "repetition_penalty": None, "max_tokens": 3}
    r = await client.post("/v1/chat/completions", json={"messages": MSGS, **explicit})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    assert sampling(seen[-1]) == (1.0, 0.9, -1, 0.0, 1.1)
    await client.post("/v1/chat/completions",
                      json={"messages": MSGS, "max_completion_tokens": 12})
    assert seen[-1].max_tokens == 12  # above max_new_tokens: the request wins
    await client.post("/v1/completions", json={"prompt": "a b", "max_tokens": 2,
                                               "top_k": 5, "min_p": None})
    assert (seen[-1].top_k, seen[-1].min_p, seen[-1].max_tokens) == (5, 0.05, 2)
    r = await client.post("/v1/responses", json={"input": "a", "temperature": 0.2,
                                                 "max_output_tokens": 2})
    assert r.json()["temperature"] == 0.2 and seen[-1].max_tokens == 2


async def test_greedy_request_drops_defaulted_filters(fake_app_factory, gen_model):
    """temperature 0 samples nothing: top_p/top_k/min_p defaults do not apply (as vLLM resets
    them); a filter the request set itself stays; repetition_penalty still applies."""
    client, seen = await spied(fake_app_factory, engine_kw={"model": gen_model})
    await client.post("/v1/chat/completions", json={"messages": MSGS, "temperature": 0})
    assert sampling(seen[-1]) == (0.0, 1.0, -1, 0.0, 1.1)
    await client.post("/v1/completions", json={"prompt": "a", "temperature": 0, "top_k": 3})
    assert sampling(seen[-1]) == (0.0, 1.0, 3, 0.0, 1.1)
    # the default temperature is not greedy, so n > 1 samples (as without defaults)
    r = await client.post("/v1/completions", json={"prompt": "a", "n": 2})
    assert r.status_code == 200


async def test_min_tokens_above_default_max_tokens_is_a_400(fake_app_factory, gen_model):
    client, _ = await spied(fake_app_factory, engine_kw={"model": gen_model})
    r = await client.post("/v1/chat/completions", json={"messages": MSGS, "min_tokens": 9})
    assert r.status_code == 400 and r.json()["error"]["param"] == "min_tokens"


async def test_vllm_mode_ignores_the_file(fake_app_factory, gen_model):
    client, seen = await spied(fake_app_factory, engine_kw={"model": gen_model,
                                                            "generation_config": "vllm"})
    await client.post("/v1/chat/completions", json={"messages": MSGS})
    assert sampling(seen[-1]) == NEUTRAL and seen[-1].max_tokens > 7  # the context's rest


async def test_folder_and_override(fake_app_factory, tmp_path):
    """A FOLDER's file on a model without one; the override JSON merged on top (null drops)."""
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.5,
                                                                 "top_k": 4}))
    client, seen = await spied(fake_app_factory, engine_kw={
        "generation_config": str(tmp_path),
        "override_generation_config": {"top_k": None, "top_p": 0.8, "max_new_tokens": 5}})
    r = await client.post("/v1/chat/completions", json={"messages": MSGS})
    assert r.json()["usage"]["completion_tokens"] == 5
    assert sampling(seen[-1]) == (0.5, 0.8, -1, 0.0, 1.0)


async def test_model_without_sampling_fields_keeps_todays_defaults(fake_app_factory):
    """The tiny model's generation_config.json has token ids only: nothing changes."""
    client, seen = await spied(fake_app_factory)
    await client.post("/v1/chat/completions", json={"messages": MSGS})
    await client.post("/v1/completions", json={"prompt": "a"})
    assert sampling(seen[0]) == sampling(seen[1]) == NEUTRAL
    assert seen[1].max_tokens == 16
