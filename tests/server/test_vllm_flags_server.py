"""A vLLM-style command line on a real server subprocess (fake core; one server for the module):
HTTPS from --ssl-keyfile/--ssl-certfile (a self-signed certificate made at test time with the
openssl command), --uvicorn-log-level, --enable-log-requests, --disable-log-stats, the accepted
no-op flags, and the generation-config defaults logged at start-up and applied to requests."""
from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time

import httpx
import openai
import pytest

from tests.server.conftest import CHATML, FAKE_CORE, ServerProcess

pytestmark = pytest.mark.slow


def self_signed_cert(folder) -> tuple[str, str]:
    """(key file, certificate file) for 127.0.0.1 and localhost."""
    assert shutil.which("openssl"), "the openssl command makes the test's certificate"
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return str(key), str(cert)


@pytest.fixture(scope="module")
def server(tiny_gpt2, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vllm_flags")
    model = tmp / "model"
    shutil.copytree(tiny_gpt2, model)
    (model / "generation_config.json").write_text(json.dumps(
        {"temperature": 0.6, "top_p": 0.9, "max_new_tokens": 6, "eos_token_id": 50256}))
    key, cert = self_signed_cert(tmp)
    context = ssl.create_default_context(cafile=cert)
    srv = ServerProcess([str(model), "--served-model-name", "tiny", "--core-factory", FAKE_CORE,
                         "--device", "cpu", "--max-model-len", "512", "--num-kv-blocks", "256",
                         "--chat-template", CHATML,
                         "--ssl-keyfile", key, "--ssl-certfile", cert,
                         "--uvicorn-log-level", "warning", "--enable-log-requests",
                         "--log-stats-interval", "0.2", "--disable-log-stats",
                         "--enable-chunked-prefill", "--tokenizer-mode", "auto"],
                        env={"FAKE_CORE_STEP_S": "0.02"}, log_path=tmp / "server.log",
                        verify=context)
    try:
        srv.wait_ready(timeout=120)
        srv.context = context
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server):
    http = httpx.Client(verify=server.context)
    yield openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0,
                        timeout=60, http_client=http)
    # An idle TLS connection left open holds the server's shutdown for asyncio's 30 s SSL
    # shutdown timeout (the client never answers its close_notify).
    http.close()


def test_https_with_the_certificate(server, client):
    assert server.base_url.startswith("https://")
    reply = client.chat.completions.create(model="tiny", messages=[
        {"role": "user", "content": "a b c d"}])
    # no max_tokens: the model's max_new_tokens from generation_config.json
    assert reply.usage.completion_tokens == 6
    with pytest.raises(httpx.HTTPError):  # plain HTTP is not served
        httpx.get(server.base_url.replace("https", "http") + "/health", timeout=5)
    with pytest.raises(httpx.ConnectError):  # nor to a client that does not trust the cert
        httpx.get(server.base_url + "/health", timeout=5)


def test_startup_log_names_the_defaults(server):
    log = server.log()
    assert ("Using default sampling params from the model's generation_config.json: "
            "{'temperature': 0.6, 'top_p': 0.9, 'max_new_tokens': 6}") in log
    assert f"Ready: https://127.0.0.1:{server.port}/v1" in log


def test_uvicorn_log_level(server):
    """--uvicorn-log-level warning: uvicorn's INFO lines are gone, pagedserve's stay."""
    log = server.log()
    assert "Engine ready" in log
    assert "Uvicorn running on" not in log and "Application startup complete" not in log


def test_log_requests_on_and_stats_off(server, client):
    client.completions.create(model="tiny", prompt="a b c", max_tokens=40, temperature=0.5)
    time.sleep(0.6)  # three stats intervals after ~0.8 s of engine work
    log = server.log()
    assert "Received request cmpl-" in log and "'temperature': 0.5" in log
    assert "Generation throughput" not in log  # --disable-log-stats wins over the interval
