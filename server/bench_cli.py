"""`pagedserve bench throughput|latency|serve`: the benchmarks/ scripts behind vLLM's flag names.

    pagedserve bench throughput [--model M] --input-len 128 --output-len 64 --num-prompts 100
    pagedserve bench latency    [--model M] --input-len 32 --output-len 128 --batch-size 8
    pagedserve bench serve      --base-url http://127.0.0.1:8000 --dataset-name sharegpt \
                                --num-prompts 200 --request-rate 4 --max-concurrency 64

`--dataset-name random` makes every prompt `--input-len` random token ids generating exactly
`--output-len` tokens; `sharegpt` takes the first `--num-prompts` requests of the shared
ShareGPT-like length workload (`benchmarks/workloads.py`: ShareGPT's prompt/output length
distribution, random token ids, EOS ignored) — not the ShareGPT conversations' text. Needs a
source checkout (benchmarks/ is not part of the installed package).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Any, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _benchmarks() -> None:
    if not os.path.isdir(os.path.join(REPO, "benchmarks")):
        raise SystemExit("pagedserve bench: needs a source checkout (benchmarks/ next to server/)")
    if REPO not in sys.path:
        sys.path.insert(0, REPO)


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset-name", choices=["random", "sharegpt"], default="random")
    p.add_argument("--input-len", type=int, default=128, help="random: prompt tokens")
    p.add_argument("--output-len", type=int, default=128, help="random: generated tokens")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)


def workload_file(args: argparse.Namespace, folder: str) -> str:
    """The requests as a workload JSON (benchmarks/workloads.py's format) in `folder`."""
    from benchmarks.workloads import load_workload

    if args.dataset_name == "random":
        if args.input_len < 1 or args.output_len < 1:
            raise SystemExit("--input-len and --output-len must be >= 1")
        reqs = [{"input_len": args.input_len, "output_len": args.output_len}] * args.num_prompts
    else:
        reqs = [{"input_len": r.input_len, "output_len": r.output_len}
                for r in load_workload("sharegpt_like", args.num_prompts)]
    path = os.path.join(folder, f"{args.dataset_name}.json")
    with open(path, "w") as fh:
        json.dump(reqs, fh)
    return path


def bench_throughput(args: argparse.Namespace) -> None:
    from benchmarks import throughput

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--workload", workload_file(args, tmp), "--num-requests", str(args.num_prompts),
                "--seed", str(args.seed), "--no-roofline"]
        if args.model:
            argv += ["--model", args.model]
        if args.n > 1:
            argv += ["--n", str(args.n)]
        for flag in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            if getattr(args, flag) is not None:
                argv += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
        if args.enable_prefix_caching:
            argv.append("--enable-prefix-caching")
        if args.output_json:
            argv += ["--output-json", args.output_json]
        m = throughput.main(argv)["metrics"]
    print(f"Throughput: {m['requests_s']:.2f} requests/s, {m['total_tok_s']:.2f} total tokens/s, "
          f"{m['output_tok_s']:.2f} output tokens/s")


def bench_latency(args: argparse.Namespace) -> None:
    """vLLM's `bench latency`: end-to-end time of one batch of `--batch-size` requests."""
    from engine import LLM, SamplingParams

    llm = LLM(model=args.model, seed=args.seed)
    vocab = len(llm.get_tokenizer())
    rng = random.Random(args.seed)
    prompts = [{"prompt_token_ids": [rng.randrange(100, vocab) for _ in range(args.input_len)]}
               for _ in range(args.batch_size)]
    params = SamplingParams(n=args.n, temperature=1.0, top_p=1.0, ignore_eos=True,
                            max_tokens=args.output_len)

    def once() -> float:
        t0 = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - t0

    for _ in range(args.num_iters_warmup):
        once()
    lat = sorted(once() for _ in range(args.num_iters))
    print(f"Avg latency: {statistics.mean(lat):.4f} seconds")
    for q in (10, 25, 50, 75, 90, 99):
        print(f"{q}% percentile latency: {lat[min(len(lat) - 1, len(lat) * q // 100)]:.4f} "
              "seconds")
    if args.output_json:
        with open(args.output_json, "w") as fh:
            json.dump({"avg_latency": statistics.mean(lat), "latencies": lat}, fh, indent=2)


def bench_serve(args: argparse.Namespace) -> None:
    from benchmarks import serving

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--base-url", args.base_url, "--workload", workload_file(args, tmp),
                "--num-requests", str(args.num_prompts), "--seed", str(args.seed),
                "--endpoint", "chat" if args.endpoint == "/v1/chat/completions" else "completions",
                "--request-rate", str(args.request_rate)]
        if args.model:
            argv += ["--model", args.model]
        if args.max_concurrency:
            argv += ["--max-concurrency", str(args.max_concurrency)]
        if args.output_json:
            argv += ["--output-json", args.output_json]
        record = serving.main(argv)[0]
    m = record["metrics"]

    def line(label: str, value: Any, fmt: str = "{:<10.2f}") -> str:
        shown = "n/a" if value is None else (fmt.format(value) if isinstance(value, float)
                                             else str(value))
        return f"{label:<40}{shown}"

    print("{s:{c}^50}".format(s=" Serving Benchmark Result ", c="="))
    print(line("Successful requests:", m["completed"]))
    print(line("Failed requests:", m["num_errors"]))
    print(line("Benchmark duration (s):", m["duration_s"]))
    print(line("Total input tokens:", m["prompt_tokens"]))
    print(line("Total generated tokens:", m["output_tokens"]))
    print(line("Request throughput (req/s):", m["requests_s"]))
    print(line("Output token throughput (tok/s):", m["output_tok_s"]))
    print(line("Total token throughput (tok/s):", m["total_tok_s"]))
    for key, title in (("ttft", "Time to First Token"), ("tpot", "Time per Output Token (excl. 1st token)"),
                       ("itl", "Inter-token Latency"), ("e2e", "End-to-end Latency")):
        print("{s:{c}^50}".format(s=f" {title} ", c="-"))
        print(line(f"Mean {key.upper()} (ms):", m.get(f"{key}_mean_ms")))
        print(line(f"Median {key.upper()} (ms):", m.get(f"{key}_p50_ms")))
        print(line(f"P99 {key.upper()} (ms):", m.get(f"{key}_p99_ms")))
    print("=" * 50)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pagedserve bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    tp = sub.add_parser("throughput", help="offline throughput (LLM.generate, all prompts at once)")
    lat = sub.add_parser("latency", help="end-to-end latency of one batch")
    srv = sub.add_parser("serve", help="online serving against a running server")
    for p in (tp, lat, srv):
        p.add_argument("--model", default=None, help="default: the engine's default model "
                       "(serve: the server's first model)")
        p.add_argument("--output-json", default=None)
    for p in (tp, srv):
        add_dataset_args(p)
    tp.add_argument("--n", type=int, default=1)
    tp.add_argument("--max-num-seqs", type=int, default=None)
    tp.add_argument("--max-num-batched-tokens", type=int, default=None)
    tp.add_argument("--max-model-len", type=int, default=None)
    tp.add_argument("--enable-prefix-caching", action="store_true")
    lat.add_argument("--input-len", type=int, default=32)
    lat.add_argument("--output-len", type=int, default=128)
    lat.add_argument("--batch-size", type=int, default=8)
    lat.add_argument("--n", type=int, default=1)
    lat.add_argument("--num-iters-warmup", type=int, default=1)
    lat.add_argument("--num-iters", type=int, default=3)
    lat.add_argument("--seed", type=int, default=0)
    srv.add_argument("--base-url", default="http://127.0.0.1:8000")
    srv.add_argument("--endpoint", default="/v1/completions",
                     choices=["/v1/completions", "/v1/chat/completions"])
    srv.add_argument("--request-rate", type=float, default=float("inf"),
                     help="Poisson arrivals per second (inf: all at once)")
    srv.add_argument("--max-concurrency", type=int, default=None)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = make_parser().parse_args(argv)
    _benchmarks()
    {"throughput": bench_throughput, "latency": bench_latency, "serve": bench_serve}[args.kind](args)
    return 0
