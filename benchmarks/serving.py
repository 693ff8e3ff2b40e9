"""Online serving benchmark: an async load generator against any OpenAI-compatible server.

Requests of a shared workload are sent to `<base-url>/v1/completions` (or chat) with streaming, at
Poisson arrivals of `--request-rate` requests/s (`inf`: all at once) and/or with at most
`--max-concurrency` in flight. Per request it records time to first token (TTFT), inter-token
latencies (ITL, between streamed chunks), time per output token after the first (TPOT) and
end-to-end latency; per run mean/p50/p99 of each, request and token throughput and the error count.
Only the URL given is ever contacted.

    python -m server serve --port 8000 &
    python benchmarks/serving.py --base-url http://127.0.0.1:8000 --workload sharegpt_like \
        --num-requests 200 --request-rate 1 4 16 inf --output-json serving.json
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import httpx

from benchmarks.workloads import WorkloadRequest, add_workload_args, load_workload

# Common one-token English words: a text prompt of N of them is about N tokens for most tokenizers.
_WORDS = ("the of and to in is it that for on was with as at by be this are from or have an "
          "they which one you had not but what all were when we there can more if no out so "
          "said up its about into than them time only new some could these two may then do "
          "first any my now such like our over man me even most made after also did many").split()


@dataclass
class RequestResult:
    """What one request observed; times in seconds, `itls` between successive content chunks."""

    ok: bool
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: Optional[float] = None
    itls: list[float] = field(default_factory=list)
    e2e: float = 0.0
    error: str = ""


def percentile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]; NaN for no data."""
    if not xs:
        return math.nan
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _stats_ms(name: str, xs: Sequence[float]) -> dict[str, float]:
    return {f"{name}_mean_ms": 1000.0 * sum(xs) / len(xs) if xs else math.nan,
            f"{name}_p50_ms": 1000.0 * percentile(xs, 50),
            f"{name}_p99_ms": 1000.0 * percentile(xs, 99)}


def summarize(results: Sequence[RequestResult], duration_s: float) -> dict[str, Any]:
    """Run metrics: throughput over the run's wall time, latency statistics over successes.

    TPOT of a request = (e2e - TTFT) / (output tokens - 1), for requests with 2+ output tokens;
    ITL statistics pool every gap between streamed chunks of every request.
    """
    ok = [r for r in results if r.ok]
    out_tok = sum(r.output_tokens for r in ok)
    in_tok = sum(r.prompt_tokens for r in ok)
    tpots = [(r.e2e - r.ttft) / (r.output_tokens - 1) for r in ok
             if r.ttft is not None and r.output_tokens > 1]
    metrics: dict[str, Any] = {
        "completed": len(ok),
        "num_errors": len(results) - len(ok),
        "duration_s": duration_s,
        "requests_s": len(ok) / duration_s if duration_s > 0 else 0.0,
        "output_tok_s": out_tok / duration_s if duration_s > 0 else 0.0,
        "total_tok_s": (in_tok + out_tok) / duration_s if duration_s > 0 else 0.0,
        "prompt_tokens": in_tok,
        "output_tokens": out_tok,
        # The PagedAttention paper's latency metric: mean of e2e / output length, in s/token.
        "normalized_latency_s_per_tok": (sum(r.e2e / r.output_tokens for r in ok if r.output_tokens)
                                         / max(1, sum(1 for r in ok if r.output_tokens))
                                         if ok else math.nan),
    }
    metrics.update(_stats_ms("ttft", [r.ttft for r in ok if r.ttft is not None]))
    metrics.update(_stats_ms("tpot", tpots))
    metrics.update(_stats_ms("itl", [x for r in ok for x in r.itls]))
    metrics.update(_stats_ms("e2e", [r.e2e for r in ok]))
    errors = [r.error for r in results if not r.ok]
    if errors:
        metrics["first_errors"] = errors[:3]
    # JSON has no NaN: an empty statistic is null.
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def make_prompt(req: WorkloadRequest, rng: random.Random, fmt: str, vocab_size: int) -> Any:
    """Token ids (OpenAI's list-of-int prompt) or text of about `input_len` tokens."""
    if fmt == "tokens":
        lo = min(1000, vocab_size // 2)  # skip the low ids where special tokens usually sit
        return [rng.randrange(lo, vocab_size) for _ in range(req.input_len)]
    return " ".join(rng.choice(_WORDS) for _ in range(req.input_len))


def build_payload(args: argparse.Namespace, model: str, prompt: Any, req: WorkloadRequest) -> dict:
    body: dict[str, Any] = {"model": model, "max_tokens": req.output_len, "stream": True,
                            "temperature": args.temperature,
                            "stream_options": {"include_usage": True}}
    if args.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if not args.no_ignore_eos:  # vLLM-style extension: generate exactly max_tokens
        body["ignore_eos"] = True
        body["min_tokens"] = req.output_len
    return body


async def sse_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The lines of a server-sent-event byte stream, split on b"\\n" only.

    httpx's `aiter_lines` follows `str.splitlines` and also breaks on U+0085, U+2028 and U+2029,
    which a token's text can decode to inside a JSON string: that cut one event in two and
    failed a request. A trailing "\\r" (CRLF streams) is dropped; UTF-8 is decoded per line, so a
    character split across network chunks is never broken.
    """
    buf = b""
    async for chunk in chunks:
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode("utf-8", errors="replace")
    if buf:
        yield buf.rstrip(b"\r").decode("utf-8", errors="replace")


async def send_request(client: httpx.AsyncClient, url: str, body: dict, input_len: int,
                       count_empty: bool = False) -> RequestResult:
    """Send one streaming request and time its chunks.

    A chunk is a token arrival when it carries text; with `count_empty`, also when it carries an
    empty text before the finish (servers running without a tokenizer stream no text).
    """
    res = RequestResult(ok=False, prompt_tokens=input_len)
    t0 = time.perf_counter()
    last = t0
    chunks = 0
    usage_tokens: Optional[int] = None
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                res.error = f"HTTP {resp.status_code}: {text[:200]}"
                res.e2e = time.perf_counter() - t0
                return res
            async for line in sse_lines(resp.aiter_bytes()):
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                msg = json.loads(data)
                if msg.get("error"):
                    raise RuntimeError(str(msg["error"])[:200])
                if msg.get("usage"):
                    usage_tokens = msg["usage"].get("completion_tokens", usage_tokens)
                    res.prompt_tokens = msg["usage"].get("prompt_tokens", res.prompt_tokens)
                for choice in msg.get("choices") or []:
                    piece = choice.get("text") or (choice.get("delta") or {}).get("content")
                    if not piece and not (count_empty and choice.get("finish_reason") is None):
                        continue
                    now = time.perf_counter()
                    if res.ttft is None:
                        res.ttft = now - t0
                    else:
                        res.itls.append(now - last)
                    last = now
                    chunks += 1
        res.e2e = time.perf_counter() - t0
        res.output_tokens = usage_tokens if usage_tokens is not None else chunks
        res.ok = res.ttft is not None
        if not res.ok:
            res.error = "stream ended without content"
    except Exception as exc:  # an error is a data point of the run, not the end of it
        res.e2e = time.perf_counter() - t0
        res.error = f"{type(exc).__name__}: {exc}"
    return res


async def run_benchmark(args: argparse.Namespace, reqs: Sequence[WorkloadRequest], model: str,
                        request_rate: float, transport: Optional[httpx.AsyncBaseTransport] = None,
                        ) -> dict[str, Any]:
    """One run at `request_rate` (inf: all at once); returns summarize()'s metrics."""
    rng = random.Random(args.seed)
    prompts = [make_prompt(r, rng, args.prompt_format, args.vocab_size) for r in reqs]
    path = "/v1/chat/completions" if args.endpoint == "chat" else "/v1/completions"
    url = args.base_url.rstrip("/") + path
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    gate = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
    arrivals = random.Random(args.seed + 1)

    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout), limits=limits,
                                 transport=transport, headers=_headers(args.api_key)) as client:
        for _ in range(args.warmup_requests):
            warm = WorkloadRequest(min(16, reqs[0].input_len), 4)
            await send_request(client, url, build_payload(args, model, prompts[0], warm),
                               warm.input_len, args.count_empty_chunks)

        async def one(req: WorkloadRequest, prompt: Any) -> RequestResult:
            body = build_payload(args, model, prompt, req)
            if gate is None:
                return await send_request(client, url, body, req.input_len,
                                          args.count_empty_chunks)
            async with gate:
                return await send_request(client, url, body, req.input_len,
                                          args.count_empty_chunks)

        # The client's own heap leaves the cyclic GC for the run: a full collection would stall
        # every stream's reads at once and show up as server latency (same for any server).
        gc.collect()
        gc.freeze()
        tasks = []
        start = time.perf_counter()
        for req, prompt in zip(reqs, prompts):
            tasks.append(asyncio.create_task(one(req, prompt)))
            if math.isfinite(request_rate):
                await asyncio.sleep(arrivals.expovariate(request_rate))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
        gc.unfreeze()
    return summarize(results, duration)


def _headers(api_key: Optional[str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def discover_model(base_url: str, timeout: float, api_key: Optional[str] = None) -> str:
    """The first model id the server lists at /v1/models."""
    async with httpx.AsyncClient(timeout=timeout, headers=_headers(api_key)) as client:
        resp = await client.get(base_url.rstrip("/") + "/v1/models")
        resp.raise_for_status()
        return resp.json()["data"][0]["id"]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_args(parser, default="sharegpt_like", default_num=200)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default=None, help="model name (default: first of /v1/models)")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                        help="bearer token (default: $OPENAI_API_KEY)")
    parser.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    parser.add_argument("--request-rate", nargs="+", default=["inf"],
                        help="requests/s of the Poisson arrivals, one run each; 'inf' = all at once")
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--prompt-format", choices=["tokens", "text"], default="tokens",
                        help="token-id prompts (exact lengths) or text of about that many words")
    parser.add_argument("--vocab-size", type=int, default=32000,
                        help="token ids are drawn from [min(1000, vocab/2), vocab-size)")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--no-ignore-eos", action="store_true",
                        help="do not send the ignore_eos/min_tokens extensions")
    parser.add_argument("--count-empty-chunks", action="store_true",
                        help="count streamed chunks with empty text as tokens (tokenizer-less "
                             "servers, e.g. dummy-weight shapes)")
    parser.add_argument("--warmup-requests", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--output-json", default=None)
    parser.add_argument("--record", action="store_true",
                        help="append each run to benchmarks/results/serving.jsonl")
    parser.add_argument("--label", default=None, help="free-form note recorded in params")
    args = parser.parse_args(argv)
    if args.endpoint == "chat":
        args.prompt_format = "text"
    args.request_rate = [float(r) for r in args.request_rate]
    return args


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    reqs = load_workload(args.workload, args.num_requests, args.workload_dir)
    model = args.model or asyncio.run(discover_model(args.base_url, args.timeout, args.api_key))
    from benchmarks.record import append_result, make_record

    records = []
    for rate in args.request_rate:
        metrics = asyncio.run(run_benchmark(args, reqs, model, rate))
        params = {"workload": args.workload, "num_requests": len(reqs), "model": model,
                  "request_rate": rate if math.isfinite(rate) else "inf",
                  "max_concurrency": args.max_concurrency, "endpoint": args.endpoint,
                  "prompt_format": args.prompt_format, "base_url": args.base_url,
                  "label": args.label}
        record = (append_result if args.record else make_record)("serving", params, metrics)
        records.append(record)
        print(f"rate {params['request_rate']}: {metrics['requests_s']:.2f} req/s, "
              f"{metrics['output_tok_s']:.1f} out tok/s, TTFT p50 {metrics['ttft_p50_ms']} ms, "
              f"TPOT p50 {metrics['tpot_p50_ms']} ms, errors {metrics['num_errors']}", flush=True)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(records, f, indent=2)
    return records


if __name__ == "__main__":
    main()
