"""The HTTP frontend's CPU cost per streamed token, with the engine taken out of the picture.

    python benchmarks/frontend_cost.py --streams 64 --tokens 400 [--http h11 --loop asyncio]

Starts the real server (`pagedserve serve`, engine core in its own process) with the fake core
of the server tests (`tests.server.fake_core`: one token per sequence per step, no model), sends
`--streams` concurrent streaming completions of `--tokens` tokens each, and reads the API-server
process's own CPU time (user + system, from /proc) across the run: everything the frontend does
per token (ZeroMQ receive, output processing, detokenization, SSE encoding, HTTP writes) divided
by the tokens streamed. The core's process and the client are not counted. CPU seconds, not wall
time, so the figure holds on a busy machine. Records to benchmarks/results/frontend_cost.jsonl.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.record import append_result  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_stream(client: httpx.AsyncClient, url: str, i: int, tokens: int) -> int:
    chunks = 0
    body = {"model": "m", "prompt": f"hello world number {i} " * 4, "max_tokens": tokens,
            "stream": True, "ignore_eos": True}
    async with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks += 1
    return chunks


async def drive(pid: int, port: int, streams: int, tokens: int) -> dict:
    url = f"http://127.0.0.1:{port}/v1/completions"
    limits = httpx.Limits(max_connections=streams + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await one_stream(client, url, -1, 8)  # warm-up
        c0, t0 = cpu_seconds(pid), time.perf_counter()
        chunks = await asyncio.gather(*(one_stream(client, url, i, tokens)
                                        for i in range(streams)))
        wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - c0
    total = streams * tokens
    return {"tokens": total, "chunks": sum(chunks), "wall_s": round(wall, 3),
            "frontend_cpu_s": round(cpu, 3),
            "frontend_cpu_us_per_token": round(cpu / total * 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=400)
    ap.add_argument("--step-s", type=float, default=0.002, help="fake core step time")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--http", default="auto", help="uvicorn --http (auto, h11, httptools)")
    ap.add_argument("--loop", default="auto", help="uvicorn --loop (auto, asyncio, uvloop)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    env = dict(os.environ, FAKE_CORE_STEP_S=str(args.step_s), PAGEDSERVE_UVICORN_HTTP=args.http,
               PAGEDSERVE_UVICORN_LOOP=args.loop, PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "server", "serve", "--port", str(args.port),
           "--served-model-name", "m", "--core-factory", "tests.server.fake_core:FakeEngineCore",
           "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{args.port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}")
            time.sleep(0.2)
        runs = [asyncio.run(drive(proc.pid, args.port, args.streams, args.tokens))
                for _ in range(args.repeat)]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    best = min(runs, key=lambda r: r["frontend_cpu_us_per_token"])
    for r in runs:
        print(r)
    if not args.no_record:
        append_result("frontend_cost", {"streams": args.streams, "tokens": args.tokens,
                                        "step_s": args.step_s, "http": args.http,
                                        "loop": args.loop, "core": "fake"},
                      {**best, "runs": runs})


if __name__ == "__main__":
    main()
