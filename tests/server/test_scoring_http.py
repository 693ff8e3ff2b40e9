"""lm-eval style scoring over HTTP on a real engine (tiny fp32 Llama, in process):
`echo + max_tokens=0 + logprobs` returns the prompt's logprobs equal to transformers' forward,
streamed or not; vLLM's prompt_logprobs on chat equal the same forward."""
from __future__ import annotations

import json

import httpx
import pytest
import pytest_asyncio
import torch

from tests.fixtures_models import load_hf_model

pytestmark = pytest.mark.asyncio(loop_scope="module")  # one engine for the module
PROMPT = "The quick brown fox jumps over the lazy dog and runs into the forest"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def real_client(tiny_model_dir):
    from engine.config import EngineArgs
    from server.api_server import build_app
    from server.args import ServerArgs
    from server.engine_client import AsyncEngineClient
    from server.metrics import ServerMetrics

    path = tiny_model_dir("llama")
    # A small token budget: the prompt is prefilled in chunks.
    cfg = EngineArgs(model=path, device="cpu", max_model_len=256, max_num_batched_tokens=8,
                     enable_prefix_caching=True).create_engine_config()
    engine = AsyncEngineClient(cfg, mode="inproc", metrics=ServerMetrics("tiny"))
    await engine.start()
    app = build_app(engine, ServerArgs(log_stats_interval=0), ["tiny"], ServerMetrics("tiny"),
                    manage_engine=False)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                               base_url="http://testserver", timeout=120)
    try:
        yield client, path, engine.tokenizer
    finally:
        await client.aclose()
        await engine.shutdown()


def hf_logprobs(path, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = load_hf_model(path)(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, -1)


async def test_echo_scoring_equals_hf(real_client):
    client, path, tok = real_client
    ids = tok(PROMPT).input_ids
    ref = hf_logprobs(path, ids)
    body = {"prompt": PROMPT, "max_tokens": 0, "echo": True, "logprobs": 2, "temperature": 0}
    for _ in range(2):  # the second run finds the prompt in the prefix cache
        r = await client.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        c = r.json()["choices"][0]
        assert c["text"] == PROMPT
        lp = c["logprobs"]
        assert len(lp["tokens"]) == len(ids) and lp["token_logprobs"][0] is None
        for pos in range(1, len(ids)):
            assert abs(lp["token_logprobs"][pos] - ref[pos - 1, ids[pos]].item()) < 1e-4
            top = ref[pos - 1].topk(2)
            got = sorted(lp["top_logprobs"][pos].values(), reverse=True)
            assert abs(got[0] - top.values[0].item()) < 1e-4
        offsets = lp["text_offset"]
        assert offsets[0] == 0 and all(b - a == len(t) for a, b, t in
                                       zip(offsets, offsets[1:], lp["tokens"]))
        assert r.json()["usage"]["completion_tokens"] == 0
    # Several prompts at once (how harnesses batch), streamed.
    r = await client.post("/v1/completions", json={**body, "prompt": [PROMPT, PROMPT[:20]],
                                                   "stream": True})
    got: dict[int, list] = {}
    for ev in r.text.split("\n\n"):
        if ev.startswith("data: {"):
            ch = json.loads(ev[6:])["choices"][0]
            if ch["logprobs"]:
                got.setdefault(ch["index"], []).extend(ch["logprobs"]["token_logprobs"])
    assert got[0][0] is None
    assert all(abs(got[0][p] - ref[p - 1, ids[p]].item()) < 1e-4 for p in range(1, len(ids)))


async def test_chat_prompt_logprobs_equal_hf(real_client):
    client, path, tok = real_client
    msgs = [{"role": "user", "content": PROMPT}]
    r = await client.post("/v1/chat/completions", json={
        "messages": msgs, "max_tokens": 1, "prompt_logprobs": 1, "temperature": 0})
    assert r.status_code == 200, r.text
    plp = r.json()["prompt_logprobs"]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False).input_ids
    ref = hf_logprobs(path, ids)
    assert len(plp) == len(ids) and plp[0] is None
    for pos in range(1, len(ids)):
        entry = plp[pos][str(ids[pos])]
        assert abs(entry["logprob"] - ref[pos - 1, ids[pos]].item()) < 1e-4
        best = max(plp[pos].values(), key=lambda e: e["logprob"])
        assert best["rank"] == 1
