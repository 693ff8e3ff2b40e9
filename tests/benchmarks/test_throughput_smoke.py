"""CPU smoke of the benchmarks: the throughput CLI on the default model, plus fast unit tests of
the serving statistics, the KV metrics, the HF batch planner and report rendering."""
from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import httpx
import pytest

from benchmarks import report, serving
from benchmarks.hf_baseline import plan_batches
from benchmarks.kv_metrics import StepProbe, kv_metrics
from benchmarks.serving import RequestResult, percentile, summarize
from benchmarks.workloads import (WorkloadRequest, load_workload, random_prompt_token_ids,
                                  workload_path)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAVE_WORKLOADS = os.path.exists(workload_path("alpaca_like"))


def test_throughput_cli_on_default_model(tmp_path):
    # A 16-request workload of alpaca_like's shape written here: the test needs nothing
    # beside the checkout (../shared/workloads is absent in a clean clone).
    import random
    rng = random.Random(0)
    (tmp_path / "alpaca_like.json").write_text(json.dumps(
        [{"input_len": rng.randint(6, 44), "output_len": rng.randint(16, 96)} for _ in range(16)]))
    cmd = [sys.executable, os.path.join(REPO, "benchmarks", "throughput.py"), "--workload",
           "alpaca_like", "--workload-dir", str(tmp_path), "--num-requests", "16",
           "--output-json", "out.json"]
    env = {**os.environ, "OUT": ""}  # never append to a caller's $OUT from a test
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads((tmp_path / "out.json").read_text())
    m, p = rec["metrics"], rec["params"]
    assert rec["bench"] == "throughput" and rec["git_sha"] and rec["device"]
    assert p["workload"] == "alpaca_like" and p["num_requests"] == 16
    assert m["num_requests"] == 16
    assert m["output_tok_s"] > 0 and m["requests_s"] > 0
    assert m["total_tok_s"] > m["output_tok_s"]
    # ignore_eos: every request generated exactly its output_len tokens.
    assert m["output_tokens"] == m["expected_output_tokens"] == p["output_tokens"]
    assert 0 < m["roofline_fraction"] < 1 and m["matmul_dtype"] == "float32"
    assert m["preemptions"] == 0
    assert 0 <= m["kv_waste_pct"] < 100
    assert 1 <= m["peak_running_requests"] <= 16
    assert "throughput alpaca_like" in proc.stdout


def test_workload_prompts_are_reproducible_and_avoid_special_ids():
    reqs = [WorkloadRequest(5, 3), WorkloadRequest(40, 1)]
    a = random_prompt_token_ids(reqs, 4, seed=1, exclude_ids=[0, 2])
    assert a == random_prompt_token_ids(reqs, 4, seed=1, exclude_ids=[0, 2])
    assert [len(p) for p in a] == [5, 40]
    assert {t for p in a for t in p} <= {1, 3}
    if HAVE_WORKLOADS:
        assert len(load_workload("alpaca_like", 7)) == 7
    with pytest.raises(FileNotFoundError, match="nosuch"):
        load_workload("nosuch")


def test_serving_statistics():
    ok = [RequestResult(ok=True, prompt_tokens=10, output_tokens=5, ttft=0.1 * i,
                        itls=[0.01 * i] * 4, e2e=0.1 * i + 0.04 * i) for i in range(1, 11)]
    bad = [RequestResult(ok=False, error="HTTP 500: boom")]
    m = summarize(ok + bad, duration_s=2.0)
    assert m["completed"] == 10 and m["num_errors"] == 1 and m["first_errors"] == ["HTTP 500: boom"]
    assert m["requests_s"] == 5.0 and m["output_tok_s"] == 25.0 and m["total_tok_s"] == 75.0
    assert m["ttft_mean_ms"] == pytest.approx(550.0)
    assert m["ttft_p50_ms"] == pytest.approx(550.0)
    assert m["ttft_p99_ms"] == pytest.approx(991.0)  # linear interpolation, as numpy
    assert m["tpot_p50_ms"] == pytest.approx(55.0)  # (e2e - ttft) / 4 = 0.01 i
    assert m["itl_mean_ms"] == pytest.approx(55.0)
    assert m["normalized_latency_s_per_tok"] == pytest.approx(sum(0.14 * i / 5 for i in range(1, 11)) / 10)
    assert percentile([3.0], 99) == 3.0 and math.isnan(percentile([], 50))
    empty = summarize(bad, duration_s=1.0)
    assert empty["completed"] == 0 and empty["ttft_p50_ms"] is None
    json.dumps(empty, allow_nan=False)


def _fake_openai_transport(tokens_per_request: int) -> httpx.MockTransport:
    """An OpenAI-style SSE completions stream, one token per chunk, usage in the last chunk."""
    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert request.url.path == "/v1/completions" and body["stream"] and body["ignore_eos"]
        if body["max_tokens"] == 13:
            return httpx.Response(500, text="boom")

        async def stream():
            for i in range(body["max_tokens"]):
                await asyncio.sleep(0.001)
                chunk = {"choices": [{"index": 0, "text": f" t{i}"}]}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": body["max_tokens"]}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream())
    return httpx.MockTransport(handler)


@pytest.mark.parametrize("rate,concurrency", [(float("inf"), None), (200.0, 2)])
def test_serving_load_generator_against_fake_stream(rate, concurrency):
    args = serving.parse_args(["--base-url", "http://127.0.0.1:1", "--model", "m",
                               "--vocab-size", "5000", "--warmup-requests", "1"])
    args.max_concurrency = concurrency
    reqs = [WorkloadRequest(7, 4), WorkloadRequest(3, 6), WorkloadRequest(5, 13)]
    m = asyncio.run(serving.run_benchmark(args, reqs, "m", rate, transport=_fake_openai_transport(0)))
    assert m["completed"] == 2 and m["num_errors"] == 1 and "HTTP 500" in m["first_errors"][0]
    assert m["output_tokens"] == 10 and m["prompt_tokens"] == 10
    assert m["ttft_p50_ms"] > 0 and m["itl_p50_ms"] > 0 and m["e2e_p99_ms"] >= m["ttft_p99_ms"]


def test_kv_metrics_from_sums_and_probe():
    before = {"num_preemptions": 1, "num_steps": 10, "kv_slots_allocated": 100,
              "kv_slots_used": 50, "logical_blocks": 20, "physical_blocks": 10, "peak_blocks": 3}
    after = {"num_preemptions": 3, "num_steps": 12, "kv_slots_allocated": 164, "kv_slots_used": 98,
             "logical_blocks": 28, "physical_blocks": 14, "peak_blocks": 4, "num_running": 0}
    m = kv_metrics(before, after)
    assert m["preemptions"] == 2 and m["num_steps"] == 2
    assert m["kv_waste_pct"] == pytest.approx(25.0)  # 1 - 48/64
    assert m["sharing_saved_pct"] == pytest.approx(50.0)
    assert m["peak_running_requests"] is None and "peak_running_requests" in m["missing_stats"]
    # A probe turns the sums into per-step series: the waste becomes a mean of per-step ratios.
    probe = StepProbe(SimpleNamespace(), enabled=False)
    probe.samples = [
        {**before, "num_steps": 11, "kv_slots_allocated": 132, "kv_slots_used": 82,
         "logical_blocks": 24, "physical_blocks": 12, "num_running": 5},
        {**after, "num_running": 2}]
    m = kv_metrics(before, after, probe)
    assert m["kv_waste_pct"] == pytest.approx(100 * (0.0 + 0.5) / 2)  # steps: 32/32, 16/32
    assert m["kv_waste_pct_slot_weighted"] == pytest.approx(25.0)
    assert m["peak_logical_blocks"] == 4 and m["peak_running_requests"] == 5
    assert m["peak_sharing_saved_pct"] == pytest.approx(0.0)


def test_hf_batches_grow_while_they_fit():
    reqs = [WorkloadRequest(10, 10)] * 5 + [WorkloadRequest(100, 100)] + [WorkloadRequest(10, 10)]
    # 20 tokens x 1 byte per request: a budget of 60 holds 3 short requests.
    assert plan_batches(reqs, 60, 1, 0, 1) == [[0, 1, 2], [3, 4], [5], [6]]
    assert plan_batches(reqs, 10**9, 1, 0, 1, max_batch_size=4) == [[0, 1, 2, 3], [4, 5, 6]]
    assert plan_batches(reqs, 10**9, 1, 0, 2) == [list(range(7))]


def _records() -> list[dict]:
    base = {"device": "NVIDIA H200", "git_sha": "abc123", "versions": {}}
    recs = []
    for i, (wl, tok) in enumerate([("sharegpt_like", 9000.0), ("fixed_512_256", 12000.0)]):
        recs.append({**base, "bench": "throughput", "date": f"2026-11-21T10:0{i}:00+00:00",
                     "params": {"workload": wl, "model": "llama3-8b", "n": 1, "beam_width": 1,
                                "num_requests": 1000},
                     "metrics": {"requests_s": 5.0, "output_tok_s": tok, "total_tok_s": 2 * tok,
                                 "roofline_tok_s": 3 * tok, "roofline_fraction": 2 / 3,
                                 "kv_waste_pct": 3.2, "preemptions": 0,
                                 "peak_running_requests": 256}})
    recs[0]["metrics"].update(hf_output_tok_s=84.0, hf_fraction=0.192, speedup_vs_hf=9000 / 84)
    recs.append({**base, "bench": "hf_baseline", "date": "2026-11-21T09:00:00+00:00",
                 "params": {"workload": "fixed_512_256", "model": "llama3-8b"},
                 "metrics": {"hf_output_tok_s": 300.0, "hf_fraction": 0.1}})
    for rate in (1.0, 4.0, "inf"):
        r = 1.0 if rate == "inf" else rate
        recs.append({**base, "bench": "serving", "date": "2026-11-21T11:00:00+00:00",
                     "params": {"workload": "sharegpt_like", "model": "m", "request_rate": rate},
                     "metrics": {"requests_s": min(r, 3.0), "output_tok_s": 500 * min(r, 3.0),
                                 "ttft_p50_ms": 20.0 * r, "ttft_p99_ms": 50.0 * r,
                                 "tpot_p50_ms": 10.0 * r, "tpot_p99_ms": 30.0 * r,
                                 "normalized_latency_s_per_tok": 0.02 * r, "num_errors": 0}})
    recs.append({**base, "bench": "sharing", "date": "2026-11-21T12:00:00+00:00",
                 "params": {"model": "m", "mode": "beam", "width": 6, "paper_saved": "37.6-55.2%"},
                 "metrics": {"sharing_saved_pct": 56.1, "peak_sharing_saved_pct": 60.0,
                             "kv_waste_pct": 4.0}})
    return recs


def test_report_renders_tables_and_plots(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _records()) + "\nnot json\n")
    out = tmp_path / "report"
    text = report.main([str(path), "--out-dir", str(out)])
    assert "## Offline throughput" in text and "## Online serving" in text
    assert "sharegpt_like" in text and "107.1x" in text and "0.667" in text
    assert "300.0" in text  # the HF baseline run on its own is matched to its workload
    assert "56.1%" in text and "37.6-55.2%" in text
    assert (out / "report.md").read_text() == text
    pytest.importorskip("matplotlib")
    for png in ("throughput_per_workload.png", "serving_latency.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_sse_lines_split_on_newline_only():
    """U+2028/U+0085 inside an event's JSON and a character cut between network chunks."""
    import asyncio
    import json

    from benchmarks.serving import sse_lines

    events = [json.dumps({"text": "a\u2028b\x85c"}, ensure_ascii=False), json.dumps({"text": "é"})]
    raw = "".join(f"data: {e}\r\n\n" for e in events).encode() + b"data: [DONE]"
    chunks = [raw[i:i + 5] for i in range(0, len(raw), 5)]

    async def collect():
        async def gen():
            for c in chunks:
                yield c
        return [line async for line in sse_lines(gen())]

    lines = asyncio.run(collect())
    assert lines == [f"data: {events[0]}", "", f"data: {events[1]}", "", "data: [DONE]"]
