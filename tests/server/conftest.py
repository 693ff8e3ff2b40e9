"""Server test fixtures.

- `fake_client`: the app in this process (httpx ASGI transport) over the real frontend
  (InputProcessor / OutputProcessor, tiny GPT-2 tokenizer) and `FakeEngineCore` in a thread.
- `ServerProcess`: `python -m server serve ...` as a subprocess on a free loopback port.
- `default_server`: that, on the default model, once per session.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
FAKE_CORE = "tests.server.fake_core:FakeEngineCore"
# A minimal ChatML template for models (like the tiny GPT-2) that ship none.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A `python -m server serve` subprocess bound to 127.0.0.1 on a free port."""

    def __init__(self, args: list[str], env: Optional[dict[str, str]] = None,
                 log_path: Optional[Path] = None, verify: Any = None):
        """`verify`: a CA file when the server serves HTTPS (--ssl-certfile)."""
        self.port = free_port()
        self.verify = verify if verify is not None else True
        scheme = "https" if verify is not None else "http"
        self.base_url = f"{scheme}://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "server", "serve", *args, "--host", "127.0.0.1",
               "--port", str(self.port)]
        full_env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false",
                    "HF_HUB_OFFLINE": "1", **(env or {})}
        self.log_path = log_path
        self._log = open(log_path, "w") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + "/health", timeout=2,
                             verify=self.verify).status_code == 200:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"server not ready in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text()[-5000:]
        return ""

    def core_pid(self) -> int:
        """Pid of the engine core process (the server's only python child)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                             text=True).stdout.split()
        pids = [int(p) for p in out]
        for pid in pids:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:  # not the resource tracker
                return pid
        raise RuntimeError(f"no engine core child of {self.proc.pid}: {pids}")

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        return self.proc.returncode


def metric_value(text: str, name: str, labels: str = "") -> float:
    """Sum of the samples of metric `name` whose label set contains `labels`."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        key, _, value = line.rpartition(" ")
        if key.split("{")[0] != name or labels not in key:
            continue
        total += float(value)
        found = True
    assert found, f"metric {name}{{{labels}}} not exported"
    return total


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_model_dir) -> str:
    return tiny_model_dir("gpt2")


@pytest.fixture
async def fake_app_factory(tiny_gpt2):
    """`await make(**server_args)` -> (httpx client, engine) over the fake core, in process;
    `engine_kw` adds or replaces EngineArgs fields (e.g. model, generation_config)."""
    from engine.config import EngineArgs
    from server.api_server import build_app
    from server.args import ServerArgs
    from server.engine_client import AsyncEngineClient
    from server.metrics import ServerMetrics
    from tests.fixtures_models import gpt2_tokenizer

    made: list[Any] = []

    async def make(max_num_seqs: int = 64, num_kv_blocks: int = 256,
                   engine_kw: Optional[dict[str, Any]] = None, **server_kw: Any):
        server_kw.setdefault("log_stats_interval", 0)
        cfg = EngineArgs(**{"model": tiny_gpt2, "device": "cpu", "max_model_len": 256,
                            "num_kv_blocks": num_kv_blocks, "max_num_seqs": max_num_seqs,
                            **(engine_kw or {})}).create_engine_config()
        metrics = ServerMetrics("tiny")
        engine = AsyncEngineClient(cfg, mode="inproc", core_factory=FAKE_CORE, metrics=metrics,
                                   tokenizer=gpt2_tokenizer())
        await engine.start()
        app = build_app(engine, ServerArgs(**server_kw), ["tiny"], metrics, manage_engine=False)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                   base_url="http://testserver", timeout=30)
        made.append((client, engine))
        return client, engine

    yield make
    for client, engine in made:
        await client.aclose()
        await engine.shutdown()


@pytest.fixture
async def fake_client(fake_app_factory):
    client, _ = await fake_app_factory(chat_template=CHATML)
    return client


@pytest.fixture(scope="session")
def default_server(tmp_path_factory):
    """The default model served by a subprocess, once per session (loading takes ~20-40 s)."""
    log = tmp_path_factory.mktemp("default_server") / "server.log"
    server = ServerProcess(["--seed", "0", "--log-stats-interval", "2"], log_path=log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
