"""Reliability of the pieces, in process (fake core, no model): the core loop never spins, the
path to the frontend is bounded, the queue limit counts waiting prompts, the step watchdog, the
shutdown error event, body limits, content types and auth headers."""
from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from types import SimpleNamespace

import pytest

from server.core_process import OUTPUT_HWM, CoreLoop
from server.core_protocol import OutputBatch, Shutdown
from server.engine_health import RestartBudget, RestartPolicy, StepWatchdog
from server.errors import shutting_down
from tests.server.test_errors import assert_error


class _StuckCore:
    """Has work that can never progress: step() changes nothing."""

    def __init__(self) -> None:
        self.steps = 0

    def has_unfinished_requests(self) -> bool:
        return True

    def step(self) -> list:
        self.steps += 1
        return []

    def stats(self) -> dict:
        return {"num_running": 0, "num_waiting": 1, "num_steps": 0}


def _run_loop(core, seconds: float, send) -> None:
    inbox: queue.Queue = queue.Queue()

    def recv(timeout):
        msgs = []
        try:
            msgs.append(inbox.get(timeout=timeout) if timeout else inbox.get_nowait())
        except queue.Empty:
            pass
        return msgs

    t = threading.Thread(target=CoreLoop(core, recv, send).run)
    t.start()
    time.sleep(seconds)
    inbox.put(Shutdown())
    t.join(5)
    assert not t.is_alive()


def test_stuck_core_blocks_on_its_inbox_instead_of_spinning():
    core, sent = _StuckCore(), []
    _run_loop(core, 1.5, sent.append)
    # A spinning loop would step (and send) hundreds of thousands of times in 1.5 s.
    assert core.steps <= 6, core.steps
    assert len(sent) <= 2 and all(isinstance(m, OutputBatch) for m in sent)
    assert sent[-1].idle  # the watchdog is told that this silence is not a slow step


class _ChattyCore(_StuckCore):
    """Progresses every step (one output each): a batch per step. Built by ThreadCoreClient."""

    instances: list["_ChattyCore"] = []
    vocab_size = 10

    def __init__(self, config=None) -> None:
        super().__init__()
        self.config = SimpleNamespace(cache=SimpleNamespace(block_size=4))
        _ChattyCore.instances.append(self)

    def step(self) -> list:
        from engine.outputs import EngineCoreOutput
        self.steps += 1
        return [EngineCoreOutput(request_id="r", seqs=[], finished=False)]

    def stats(self) -> dict:
        return {"num_steps": self.steps, "num_total_blocks": 8, "block_size": 4}


async def test_core_blocks_when_the_frontend_stops_reading():
    """The path core -> frontend is bounded: a frontend that does not read stops the core
    after OUTPUT_HWM batches instead of growing a queue without limit."""
    from server.core_client import ThreadCoreClient

    client = ThreadCoreClient(None, "tests.server.test_reliability_units:_ChattyCore")
    await client.start()
    deadline = time.monotonic() + 10  # a loaded CI machine may take a while to fill it
    while client._outbox.qsize() < OUTPUT_HWM and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # a core that did not block would keep stepping meanwhile
    core = _ChattyCore.instances[-1]
    assert client._outbox.qsize() == OUTPUT_HWM
    assert core.steps <= OUTPUT_HWM + 2, core.steps
    for _ in range(10):  # reading lets it go on
        await client.get_output()
    deadline = time.monotonic() + 10
    while core.steps <= OUTPUT_HWM + 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert core.steps > OUTPUT_HWM + 2
    client.send(Shutdown())
    # Keep reading so that a core blocked on a full outbox sees the Shutdown; the core thread may
    # end between is_alive() and the next read, so each read waits briefly rather than forever.
    deadline = time.monotonic() + 10
    while client.is_alive() and time.monotonic() < deadline:
        try:
            await asyncio.wait_for(client.get_output(), 0.2)
        except asyncio.TimeoutError:
            pass
    assert not client.is_alive()


def test_restart_budget_and_watchdog():
    budget = RestartBudget(RestartPolicy(max_retries=2, base_backoff_s=0.5, max_backoff_s=0.75))
    assert [budget.next_delay(), budget.next_delay(), budget.next_delay()] == [0.5, 0.75, None]
    assert RestartBudget(RestartPolicy(enabled=False)).next_delay() is None
    dog = StepWatchdog(0.2)
    dog.work_sent()
    assert dog.problem(has_work=True) is None
    time.sleep(0.3)
    assert "engine-step-timeout" in dog.problem(has_work=True)
    assert dog.problem(has_work=False) is None
    dog.heard(idle=True)  # a core that said it waits for input is not stuck
    time.sleep(0.3)
    assert dog.problem(has_work=True) is None


async def test_queue_limit_counts_waiting_prompts(fake_app_factory, monkeypatch):
    monkeypatch.setenv("FAKE_CORE_STEP_S", "0.02")
    client, engine = await fake_app_factory(max_num_seqs=4, max_queue_len=4)
    body = {"prompt": "a b", "max_tokens": 40}
    # Idle server, burst of 8: 4 run at once and 4 wait: nobody is over the limit.
    results = await asyncio.gather(*(client.post("/v1/completions", json=body)
                                     for _ in range(8)))
    assert [r.status_code for r in results] == [200] * 8
    # One request whose 12 prompts would leave 8 waiting: over the limit, as a whole.
    r = await client.post("/v1/completions", json={**body, "prompt": ["a"] * 12})
    assert_error(r, 429, code="rate_limit_exceeded")
    r = await client.post("/v1/completions", json={**body, "prompt": ["a"] * 8})
    assert r.status_code == 200 and len(r.json()["choices"]) == 8
    assert engine.num_waiting() == 0


async def test_step_watchdog_marks_unhealthy(fake_app_factory, monkeypatch):
    monkeypatch.setenv("FAKE_CORE_STEP_S", "0.6")
    client, engine = await fake_app_factory()
    engine._watchdog.timeout_s = 0.3
    assert (await client.get("/health")).status_code == 200
    task = asyncio.create_task(client.post("/v1/completions",
                                           json={"prompt": "a", "max_tokens": 5}))
    # Five 0.6 s steps: /health turns 503 while one has run past 0.3 s. Polled rather than read
    # at a fixed time, which raced with the request reaching the core on a loaded machine.
    r = await client.get("/health")
    while r.status_code == 200 and not task.done():
        await asyncio.sleep(0.05)
        r = await client.get("/health")
    assert_error(r, 503, code="engine_dead", contains="engine-step-timeout")
    assert (await task).status_code == 200
    await asyncio.sleep(0.1)
    assert (await client.get("/health")).status_code == 200


async def test_shutdown_timeout_ends_streams_with_error_event(fake_app_factory, monkeypatch):
    monkeypatch.setenv("FAKE_CORE_STEP_S", "0.02")
    client, engine = await fake_app_factory()
    body = {"prompt": "a b", "max_tokens": 5000 // 20, "stream": True}

    async def stream() -> list:
        events = []
        async with client.stream("POST", "/v1/completions", json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
        return events

    streams = asyncio.gather(stream(), stream())
    plain = asyncio.create_task(client.post("/v1/completions",
                                            json={"prompt": "a", "max_tokens": 200}))
    await asyncio.sleep(0.3)
    engine.fail_in_flight(shutting_down())
    for events in await streams:
        assert events[-1] == "[DONE]"
        err = json.loads(events[-2])["error"]
        assert err["message"] == "server shutting down" and err["code"] == "server_shutting_down"
    assert_error(await plain, 503, code="server_shutting_down")
    assert engine.num_in_flight == 0


async def test_body_limit_content_type_and_auth(fake_app_factory):
    client, _ = await fake_app_factory(max_request_body_bytes=1000, api_key="k")
    auth = {"Authorization": "Bearer k"}
    r = await client.post("/v1/completions", headers=auth,
                          json={"prompt": "x" * 2000, "max_tokens": 1})
    assert_error(r, 413, code="request_too_large")

    async def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(10):
            yield b"x" * 500

    r = await client.post("/v1/completions", headers={**auth, "content-type": "application/json"},
                          content=chunks())
    assert_error(r, 413, code="request_too_large")
    r = await client.post("/v1/completions", headers={**auth, "content-type": "text/plain"},
                          content=b'{"prompt": "x"}')
    assert_error(r, 415, code="unsupported_media_type")
    r = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert_error(r, 401, code="invalid_api_key")
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = await client.post("/v1/completions", headers=auth, json={"prompt": "x", "max_tokens": 1})
    assert r.status_code == 200


@pytest.mark.parametrize("body,param", [
    ({"prompt": "x", "temperature": float("nan")}, "temperature"),
    ({"prompt": "x", "top_p": float("inf")}, "top_p"),
    ({"prompt": "x", "logit_bias": {"5": float("nan")}}, "logit_bias"),
    ({"prompt": "x", "seed": 2 ** 64}, "seed"),
    ({"prompt": "x", "seed": 2 ** 64 - 1, "n": 2, "temperature": 1}, "seed"),
    ({"prompt": "x", "top_k": 2 ** 70}, "top_k"),
    ({"prompt": "x", "stop_token_ids": [1, 2 ** 64]}, "stop_token_ids"),
    ({"prompt": [1, 2 ** 65]}, "prompt"),
    ({"prompt": "a\ud800b"}, "prompt"),
    ({"prompt": "x", "max_tokens": 10 ** 9}, "max_tokens"),
    ({"prompt": "x", "n": 65, "temperature": 1}, "n"),
    ({"prompt": "x", "best_of": 10 ** 6, "temperature": 1}, "best_of"),
    ({"prompt": "x", "n": 2, "best_of": 80, "temperature": 1}, "best_of"),
    ({"prompt": "x", "use_beam_search": True, "n": 65, "temperature": 0}, "n"),
])
async def test_values_the_engine_cannot_take(fake_client, body, param):
    raw = json.dumps(body, allow_nan=True)  # NaN/Infinity as Python's json writes them
    r = await fake_client.post("/v1/completions", content=raw,
                               headers={"content-type": "application/json"})
    assert_error(r, 400, param=param)


async def test_surrogates_in_chat_and_tokenize(fake_client):
    r = await fake_client.post("/v1/chat/completions", content=json.dumps(
        {"messages": [{"role": "user", "content": "a\ud800"}]}),
        headers={"content-type": "application/json"})
    assert_error(r, 400, param="messages[0].content")
    r = await fake_client.post("/tokenize", content=json.dumps({"prompt": "\udfffx"}),
                               headers={"content-type": "application/json"})
    assert_error(r, 400, param="prompt")


async def test_unread_stream_holds_one_output(fake_app_factory, monkeypatch):
    """A client that does not read its stream costs one pending output, not one per step."""
    monkeypatch.setenv("FAKE_CORE_STEP_S", "0.002")
    from engine.sampling_params import SamplingParams

    _, engine = await fake_app_factory()
    stream = await engine.add_request("slow", "a b c d", None, SamplingParams(max_tokens=200))
    await asyncio.sleep(0.3)
    assert engine._states["slow"].queue.qsize() <= 1
    final = None
    async for out in stream:  # reading now: the latest (cumulative) output, then the end
        final = out
    assert final.finished and len(final.outputs[0].token_ids) == 200


def test_swap_pool_usage_and_restart_counter_are_exported():
    from server.metrics import ServerMetrics
    from tests.server.conftest import metric_value

    m = ServerMetrics("m")
    m.update_engine_stats({"kv_cache_usage": 0.5, "num_total_cpu_blocks": 8,
                           "num_swapped_out_blocks": 2, "prompt_tokens_total": 10})
    text = m.render().decode()
    assert metric_value(text, "pagedserve:kv_cache_usage_perc", 'pool="gpu"') == 0.5
    assert metric_value(text, "pagedserve:kv_cache_usage_perc", 'pool="cpu"') == 0.25
    assert metric_value(text, "pagedserve:engine_restarts_total") == 0
    m.engine_restarted()  # the fresh core counts from zero: its tokens still add up
    m.update_engine_stats({"prompt_tokens_total": 4})
    text = m.render().decode()
    assert metric_value(text, "pagedserve:engine_restarts_total") == 1
    assert metric_value(text, "pagedserve:prompt_tokens_total") == 14


def test_long_prompt_is_refused_from_its_head(tiny_gpt2):
    """A prompt far over the context is refused after tokenizing a head of it, or from its
    length alone; one that may fit is tokenized whole."""
    from engine.config import EngineArgs
    from engine.input_processor import HEAD_CHARS_PER_TOKEN, InputProcessor
    from tests.fixtures_models import gpt2_tokenizer

    cfg = EngineArgs(model=tiny_gpt2, device="cpu", max_model_len=256).create_engine_config()
    tok = gpt2_tokenizer()
    seen: list[int] = []

    class Counting:
        def __getattr__(self, name):
            return getattr(tok, name)

        def __call__(self, text, **kw):
            seen.append(len(text))
            return tok(text, **kw)

    ip = InputProcessor(cfg.model, Counting(), 50257, 64, 16)
    text = "x " * 20_000  # ~20k tokens, well under the length-only bound
    with pytest.raises(ValueError, match="^prompt: .*maximum context length"):
        ip.tokenize_for_context(text)
    assert seen == [HEAD_CHARS_PER_TOKEN * 256]
    with pytest.raises(ValueError, match="^messages: .* characters cannot fit"):
        ip.tokenize_for_context("y" * (ip.max_token_chars() * 256 + 1), field="messages")
    assert len(seen) == 1  # refused by its length alone
    assert len(ip.tokenize_for_context("hello world " * 10)) > 0


@pytest.mark.parametrize("kw,field", [
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"logit_bias": {1: float("nan")}}, "logit_bias"),
    ({"use_beam_search": True, "n": 2, "temperature": 0, "length_penalty": float("nan")},
     "length_penalty"),
    ({"seed": 2 ** 63}, "seed"),
])
def test_offline_params_refuse_what_the_engine_cannot_take(kw, field):
    from engine.sampling_params import SamplingParams

    with pytest.raises(ValueError, match=f"^{field}: "):
        SamplingParams(**kw)


def test_offline_engine_refuses_unschedulable_n(tiny_gpt2):
    """The admission check is the engine's: the offline API refuses it too (it would hang)."""
    from engine.config import EngineArgs
    from engine.input_processor import InputProcessor
    from engine.sampling_params import SamplingParams

    cfg = EngineArgs(model=tiny_gpt2, device="cpu", max_model_len=64).create_engine_config()
    ip = InputProcessor(cfg.model, None, 100, 64, 16, max_num_seqs=4)
    with pytest.raises(ValueError, match="^n: .*max_num_seqs"):
        ip.process("r", None, [1, 2], SamplingParams(n=5, temperature=1, max_tokens=2))
    with pytest.raises(ValueError, match="^best_of: .*max_num_seqs"):
        ip.process("r", None, [1, 2], SamplingParams(n=2, best_of=5, temperature=1,
                                                     max_tokens=2))
    assert ip.process("r", None, [1, 2], SamplingParams(n=4, temperature=1, max_tokens=2))
