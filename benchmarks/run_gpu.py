"""`make bench-gpu`: the standard GPU benchmark set in one run, then a compact table.

Kernels (decode_attention, prefill_attention), decode latency on the Llama-3-8B shape, and
offline throughput on the shared workloads (Llama-3-8B shape, dummy weights). Results append to
benchmarks/results/*.jsonl (and $OUT). Set WORKLOAD_DIR when ../shared/workloads is not beside
the checkout; SKIP=a,b to leave parts out.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def run(name: str, argv: list[str], rows: list, timeout: int = 400) -> None:
    if name in os.environ.get("SKIP", "").split(","):
        return
    t0 = time.time()
    out_json = f"/tmp/bench_{name}.json"
    cmd = [sys.executable] + argv
    if "throughput" in argv[0]:
        cmd += ["--output-json", out_json]
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout)
    status = "ok" if proc.returncode == 0 else f"rc={proc.returncode}"
    metrics = {}
    if os.path.exists(out_json):
        with open(out_json) as f:
            metrics = json.load(f).get("metrics", {})
        os.remove(out_json)
    rows.append((name, status, time.time() - t0, metrics))


def main() -> None:
    wdir = os.environ.get("WORKLOAD_DIR", os.path.join(ROOT, "..", "shared", "workloads"))
    rows: list = []
    run("decode_attention", ["benchmarks/kernel_bench/decode_attention.py"], rows)
    run("prefill_attention", ["benchmarks/kernel_bench/prefill_attention.py"], rows)
    run("latency", ["benchmarks/latency.py", "--model-shape", "llama3-8b"], rows)
    for wl in ("sharegpt_like", "fixed_512_256"):
        run(f"throughput_{wl}", ["benchmarks/throughput.py", "--workload", wl, "--workload-dir",
                                 wdir, "--model-shape", "llama3-8b"], rows)
    print("\n| bench | status | seconds | key metrics |\n|---|---|---|---|")
    keys = ("output_tok_s", "total_tok_s", "roofline_fraction", "kv_waste_pct", "preemptions")
    for name, status, secs, metrics in rows:
        shown = ", ".join(f"{k}={metrics[k]:.3g}" if isinstance(metrics.get(k), float)
                          else f"{k}={metrics[k]}" for k in keys if k in metrics)
        print(f"| {name} | {status} | {secs:.0f} | {shown} |")


if __name__ == "__main__":
    main()
