"""Process-level behaviour of a real server subprocess (engine core in its own process, here the
fake core so timing is deterministic): engine death, SIGTERM graceful shutdown, API key from env."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import openai
import pytest

from tests.server.conftest import FAKE_CORE, ServerProcess

pytestmark = pytest.mark.slow


def start_fake_server(tiny_gpt2: str, tmp_path, *extra: str, env=None) -> ServerProcess:
    server = ServerProcess([tiny_gpt2, "--served-model-name", "tiny", "--core-factory", FAKE_CORE,
                            "--device", "cpu", "--max-model-len", "512", "--num-kv-blocks", "256",
                            *extra],
                           env={"FAKE_CORE_STEP_S": "0.05", **(env or {})},
                           log_path=tmp_path / "server.log")
    try:
        server.wait_ready(timeout=120)
    except BaseException:
        server.stop()
        raise
    return server


def read_stream(url: str, body: dict, events: list, first_event: threading.Event) -> None:
    """Collect SSE payloads of one streaming request (run in a thread)."""
    try:
        with httpx.stream("POST", url, json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    payload = line[len("data: "):]
                    events.append(payload if payload == "[DONE]" else json.loads(payload))
                    first_event.set()
    except httpx.HTTPError as exc:
        events.append(exc)
    finally:
        first_event.set()


def test_engine_death_fail_fast(tiny_gpt2, tmp_path):
    """--no-engine-restart: in-flight requests end cleanly (503 / error event), then the
    server exits non-zero for its orchestrator to restart."""
    server = start_fake_server(tiny_gpt2, tmp_path, "--no-engine-restart")
    try:
        url = server.base_url + "/v1/completions"
        events: list = []
        started = threading.Event()
        streamer = threading.Thread(target=read_stream, args=(
            url, {"prompt": "a b c", "max_tokens": 400, "stream": True}, events, started))
        streamer.start()
        result: dict = {}

        def blocking() -> None:
            result["r"] = httpx.post(url, json={"prompt": "d e", "max_tokens": 400}, timeout=60)

        waiter = threading.Thread(target=blocking)
        waiter.start()
        assert started.wait(30)
        time.sleep(0.3)
        os.kill(server.core_pid(), signal.SIGKILL)

        streamer.join(10)
        waiter.join(10)
        assert not streamer.is_alive() and not waiter.is_alive(), "in-flight requests hang"
        # The stream ends with an in-band error object, then [DONE].
        assert events[-1] == "[DONE]" and "error" in events[-2], events[-3:]
        assert events[-2]["error"]["code"] == "engine_dead"
        r = result["r"]
        assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert server.proc.wait(30) == 1
    finally:
        server.stop()


def test_sigterm_lets_in_flight_requests_finish(tiny_gpt2, tmp_path):
    server = start_fake_server(tiny_gpt2, tmp_path, "--shutdown-timeout", "20",
                               env={"PAGEDSERVE_API_KEY": "k3y"})
    try:
        # The key comes from the environment; the official SDK sees 401 as AuthenticationError.
        bad = openai.OpenAI(base_url=server.base_url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=server.base_url + "/v1", api_key="k3y", max_retries=0)
        assert good.models.list().data[0].id == "tiny"

        started = threading.Event()
        body = {"prompt": "a b c", "max_tokens": 30, "stream": True}
        events_auth: list = []

        def run() -> None:
            with httpx.Client(headers={"Authorization": "Bearer k3y"}, timeout=60) as c:
                with c.stream("POST", server.base_url + "/v1/completions", json=body) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: "):
                            events_auth.append(line[6:])
                            started.set()

        t = threading.Thread(target=run)
        t.start()
        assert started.wait(30)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):  # no longer accepting
            httpx.get(server.base_url + "/health", timeout=2)
        t.join(30)
        assert server.proc.wait(30) == 0
        assert events_auth[-1] == "[DONE]"
        finishes = [json.loads(e)["choices"][0]["finish_reason"] for e in events_auth[:-1]]
        assert finishes[-1] == "length" and finishes.count("length") == 1
    finally:
        server.stop()


def test_sigterm_timeout_aborts_and_exits(tiny_gpt2, tmp_path):
    server = start_fake_server(tiny_gpt2, tmp_path, "--shutdown-timeout", "1")
    try:
        events: list = []
        started = threading.Event()
        t = threading.Thread(target=read_stream, args=(
            server.base_url + "/v1/completions",
            {"prompt": "a b c", "max_tokens": 450, "stream": True}, events, started))
        t.start()
        assert started.wait(30)
        t0 = time.time()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
        assert time.time() - t0 < 15
        t.join(10)
        assert not t.is_alive()
        # The request did not run to its 450 tokens: it ended with an error event and [DONE].
        assert not any(isinstance(e, dict) and e.get("choices") and
                       e["choices"][0]["finish_reason"] == "length" for e in events)
        assert events[-1] == "[DONE]", events[-3:]
        assert events[-2]["error"]["message"] == "server shutting down"
    finally:
        server.stop()
