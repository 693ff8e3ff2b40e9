"""Data parallelism behind the real server: `--data-parallel-size 2` runs two engine cores (tiny
llama, CPU). Distinct prompts spread over both cores; outputs equal the one-core engine's;
prompts sharing a long prefix land on the core that served it first; killing one core's process
follows the death policy (restart) while the server keeps serving.
"""
from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import ServerProcess, metric_value

PROMPTS = ["Hello world", "The quick brown fox", "Paged attention stores", "one two three",
           "A B C D", "In the beginning"]
PREFIX = ("Paged attention keeps the KV cache of every sequence in fixed-size blocks that are "
          "allocated on demand and shared between sequences with a common prefix. ")


@pytest.fixture(scope="module")
def dp_server(tiny_model_dir, tmp_path_factory):
    path = tiny_model_dir("llama")
    log = tmp_path_factory.mktemp("dp") / "server.log"
    srv = ServerProcess([path, "--device", "cpu", "--data-parallel-size", "2",
                         "--enable-prefix-caching", "--log-stats-interval", "0",
                         "--cpu-threads", "1"], log_path=log)
    try:
        srv.wait_ready()
        yield path, srv
    finally:
        srv.stop()


def complete(srv: ServerProcess, prompt: str, max_tokens: int = 6) -> str:
    r = httpx.post(srv.base_url + "/v1/completions", timeout=120,
                   json={"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                         "ignore_eos": True})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def routed(srv: ServerProcess) -> list[float]:
    text = httpx.get(srv.base_url + "/metrics", timeout=30).text
    return [metric_value(text, "pagedserve:engine_requests_routed", f'engine="{i}"')
            for i in range(2)]


def core_pids(srv: ServerProcess) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(srv.proc.pid)], capture_output=True,
                         text=True).stdout.split()
    return [int(p) for p in out if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


def test_both_cores_serve_and_outputs_equal_one_core(dp_server):
    path, srv = dp_server
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        texts = list(pool.map(lambda p: complete(srv, p), PROMPTS))
    counts = routed(srv)
    assert all(c > 0 for c in counts), counts
    from engine import LLM, SamplingParams
    llm = LLM(model=path, device="cpu")
    ref = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True),
                       use_tqdm=False)
    assert texts == [o.outputs[0].text for o in ref]


def test_shared_prefix_lands_on_the_same_core(dp_server):
    _, srv = dp_server
    before = routed(srv)
    complete(srv, PREFIX + "first")
    first = routed(srv)
    core = [i for i in range(2) if first[i] > before[i]]
    assert len(core) == 1
    for tail in ("second", "third", "fourth"):
        complete(srv, PREFIX + tail)
    after = routed(srv)
    assert after[core[0]] - first[core[0]] == 3 and after[1 - core[0]] == first[1 - core[0]]


def test_killing_one_core_restarts_it(dp_server):
    _, srv = dp_server
    pids = core_pids(srv)
    assert len(pids) == 2
    os.kill(pids[1], signal.SIGKILL)
    deadline = time.time() + 120
    while time.time() < deadline:
        text = httpx.get(srv.base_url + "/metrics", timeout=30).text
        if metric_value(text, "pagedserve:engine_restarts_total") >= 1 and \
                httpx.get(srv.base_url + "/health", timeout=5).status_code == 200:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the killed core was not restarted:\n" + srv.log())
    assert len(core_pids(srv)) == 2
    for p in PROMPTS[:4]:
        assert complete(srv, p, max_tokens=2)
