"""`pagedserve serve` and `vllm serve` side by side on one GPU, driven by benchmarks/serving.py.

Both servers stay up for the whole comparison (each with part of the GPU memory: they never run
a load at the same time) and the cases alternate between them, the order swapped every round:

    python benchmarks/serve_vs_vllm.py start --model-dir DIR --vllm-cmd "bash .../device.sh python3 -m vllm.entrypoints.cli.main"
    python benchmarks/serve_vs_vllm.py bench --rounds 2 --results /tmp/vs.json
    python benchmarks/serve_vs_vllm.py record /tmp/vs.json     # -> results/vs_vllm.jsonl

Cases: `serving_rate8`, `serving_rate32`, `serving_rateinf` (the workload's first 500 requests
at 8, 32 req/s and all at once) and `serving_single` (one request at a time). `record` writes one
`vs_vllm` record per case with both servers' medians over rounds and `metrics.speedup`, the worst
ratio over the case's metrics (above 1: pagedserve better; times vLLM's / ours, throughput ours
/ vLLM's). GPU busy is sampled with NVML during each run.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

PORTS = {"pagedserve": 8000, "vllm": 8001}
CASES = {
    "serving_rate8": dict(rate="8", num=500, conc=None),
    "serving_rate32": dict(rate="32", num=500, conc=None),
    "serving_rateinf": dict(rate="inf", num=500, conc=None),
    "serving_single": dict(rate="inf", num=24, conc=1),
}
# Metrics each case is judged on: (name, True when higher is better).
JUDGED = {
    "serving_rate8": [("ttft_p50_ms", False), ("ttft_p99_ms", False), ("tpot_p50_ms", False),
                      ("tpot_p99_ms", False), ("itl_p99_ms", False)],
    "serving_rate32": [("ttft_p50_ms", False), ("ttft_p99_ms", False), ("tpot_p50_ms", False),
                       ("tpot_p99_ms", False), ("itl_p99_ms", False)],
    "serving_rateinf": [("output_tok_s", True)],
    "serving_single": [("ttft_p50_ms", False), ("tpot_p50_ms", False)],
}


def start(args) -> None:
    """Start the servers (own sessions: they outlive this command), one after the other so
    each sizes its KV cache from the memory the other left."""
    mem = str(args.gpu_memory_utilization)
    cmds = {
        "pagedserve": [sys.executable, "-m", "server", "serve", args.model_dir, "--load-format",
                       "dummy", "--port", str(PORTS["pagedserve"]), "--gpu-memory-utilization",
                       mem] + shlex.split(args.pagedserve_args),
        "vllm": shlex.split(args.vllm_cmd) + [
            "serve", args.model_dir, "--load-format", "dummy", "--port", str(PORTS["vllm"]),
            "--gpu-memory-utilization", mem, "--no-enable-prefix-caching"]
            + shlex.split(args.vllm_args),
    }
    for name in args.servers.split(","):
        log = open(f"/tmp/{name}_server.log", "w")
        proc = subprocess.Popen(cmds[name], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=dict(os.environ, PYTHONPATH=ROOT + (
                                    ":" + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH")
                                    else "")))
        t0 = time.time()
        while not _ready(PORTS[name]):
            if proc.poll() is not None or time.time() - t0 > args.timeout:
                print(open(f"/tmp/{name}_server.log").read()[-4000:])
                raise SystemExit(f"{name} did not start")
            time.sleep(1)
        print(f"{name} ready in {time.time() - t0:.0f} s (pid {proc.pid})", flush=True)
        with open("/tmp/serve_vs_vllm.pids", "a") as f:  # `stop` ends exactly these
            f.write(f"{proc.pid}\n")
        with open(f"/tmp/serve_vs_vllm.{name}.pid", "w") as f:  # CpuUse finds its processes
            f.write(f"{proc.pid}\n")


def stop(args) -> None:
    """End the servers `start` started (their process groups), by pid."""
    import signal
    if not os.path.exists("/tmp/serve_vs_vllm.pids"):
        return
    for pid in open("/tmp/serve_vs_vllm.pids").read().split():
        try:
            os.killpg(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass
    os.remove("/tmp/serve_vs_vllm.pids")
    time.sleep(args.wait)


def _ready(port: int) -> bool:
    import httpx
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class GpuBusy:
    """Mean NVML GPU utilisation over a run, sampled every 100 ms."""

    def __enter__(self):
        self.samples, self._stop = [], threading.Event()
        try:
            import pynvml
            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:
            self._thread = None
            return self

        def loop():
            while not self._stop.wait(0.1):
                self.samples.append(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()

    @property
    def mean(self):
        return statistics.mean(self.samples) if self.samples else None


class CpuUse:
    """CPU cores each process of one server's tree used over a run (user + system time / wall):
    which side (HTTP frontend, engine core) is busy, next to the GPU's figure."""

    def __init__(self, name: str):
        self.name, self.cores = name, {}

    def _procs(self) -> dict:
        import psutil
        path = f"/tmp/serve_vs_vllm.{self.name}.pid"
        try:
            root = psutil.Process(int(open(path).read()))
            procs = [root] + root.children(recursive=True)
        except (OSError, ValueError, psutil.Error):
            return {}
        out = {}
        for p in procs:
            try:
                t = p.cpu_times()
                out[(p.pid, " ".join(p.cmdline()[:4])[-60:])] = t.user + t.system
            except psutil.Error:
                pass
        return out

    def __enter__(self):
        self._t0, self._c0 = time.perf_counter(), self._procs()
        return self

    def __exit__(self, *exc):
        wall, c1 = time.perf_counter() - self._t0, self._procs()
        used = {f"{pid} {cmd}": round((c - self._c0.get((pid, cmd), 0.0)) / wall, 2)
                for (pid, cmd), c in c1.items()}
        self.cores = {k: v for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v >= 0.05}


def bench(args) -> None:
    from benchmarks import serving
    results = json.load(open(args.results)) if os.path.exists(args.results) else []
    order = args.order.split(",")
    for rnd in range(args.rounds):
        servers = order if (rnd + args.round_offset) % 2 == 0 else order[::-1]
        for case in args.cases.split(","):
            c = CASES[case]
            for name in servers:
                num = min(c["num"], args.max_requests) if args.max_requests else c["num"]
                argv = ["--base-url", f"http://127.0.0.1:{PORTS[name]}", "--workload",
                        args.workload, "--workload-dir", args.workload_dir, "--num-requests",
                        str(num), "--request-rate", c["rate"], "--vocab-size", "128000"]
                if c["conc"]:
                    argv += ["--max-concurrency", str(c["conc"])]
                with GpuBusy() as busy, CpuUse(name) as cpu:
                    rec = serving.main(argv)[0]
                m = dict(rec["metrics"], gpu_busy_pct=busy.mean, cpu_cores=cpu.cores)
                results.append(dict(server=name, case=case, round=rnd + args.round_offset,
                                    metrics=m, device=rec["device"], versions=rec["versions"],
                                    git_sha=rec["git_sha"], date=rec["date"]))
                print(f"{case} {name}: " + ", ".join(
                    f"{k}={m.get(k)}" for k, _ in JUDGED[case] + [("gpu_busy_pct", 0),
                                                                  ("num_errors", 0)])
                      + f"; cpu cores {m['cpu_cores']}", flush=True)
                with open(args.results, "w") as f:
                    json.dump(results, f, indent=1)
                if os.environ.get("OUT"):
                    with open(os.path.join(os.environ["OUT"], "vs_vllm_runs.json"), "w") as f:
                        json.dump(results, f, indent=1)


def record(args) -> None:
    from benchmarks.record import RESULTS_DIR, make_record
    runs = json.load(open(args.results))
    offline = json.load(open(args.offline_bs1)) if args.offline_bs1 else None
    if offline and args.vllm_ttft_bs1_ms:
        _record_ttft_bs1(args, offline, runs[-1])
    for case, judged in JUDGED.items():
        mine = [r for r in runs if r["case"] == case and r["server"] == "pagedserve"]
        theirs = [r for r in runs if r["case"] == case and r["server"] == "vllm"]
        if not mine or not theirs:
            continue
        keys = [k for k, _ in judged] + ["output_tok_s", "requests_s", "itl_p99_ms",
                                         "gpu_busy_pct", "num_errors"]
        med = lambda rs, k: (statistics.median(r["metrics"][k] for r in rs)  # noqa: E731
                             if all(r["metrics"].get(k) is not None for r in rs) else None)
        ratios = {k: (med(mine, k) / med(theirs, k) if hi else med(theirs, k) / med(mine, k))
                  for k, hi in judged}
        if case == "serving_single" and offline:
            # The single-stream TPOT target is pagedserve's own offline batch-1 decode
            # (x1.02), not vLLM's; vLLM's ratio stays in the record for reference.
            ratios["tpot_p50_vs_vllm"] = ratios.pop("tpot_p50_ms")
            ratios["tpot_p50_vs_1.02x_own_offline_bs1"] = (1.02 * offline["decode_bs1_ms"]
                                                          / med(mine, "tpot_p50_ms"))
        judged_keys = [k for k in ratios if k != "tpot_p50_vs_vllm"]
        metrics = {"speedup": min(ratios[k] for k in judged_keys), "ratios": ratios,
                   "pagedserve": {k: med(mine, k) for k in keys},
                   "vllm": {k: med(theirs, k) for k in keys},
                   "pagedserve_runs": [r["metrics"] for r in mine],
                   "vllm_runs": [r["metrics"] for r in theirs]}
        params = {"case": case, "workload": args.workload, "num_requests": CASES[case]["num"],
                  "request_rate": CASES[case]["rate"], "max_concurrency": CASES[case]["conc"],
                  "model": "llama3-8b shape, dummy weights, Llama-3 tokenizer",
                  "vllm": "0.26.0", "prefix_caching": False, "runs_each": len(mine),
                  "note": args.note}
        rec = make_record("vs_vllm", params, metrics)
        # The measured machine and code, not this one's.
        for k in ("device", "versions", "git_sha", "date"):
            rec[k] = mine[-1][k]
        rec["versions"] = dict(rec["versions"], vllm="0.26.0")
        with open(os.path.join(RESULTS_DIR, "vs_vllm.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(case, f"speedup {metrics['speedup']:.3f}", ratios)


def _record_ttft_bs1(args, offline: dict, run: dict) -> None:
    """Offline batch 1: prefill of 128 tokens + the first token (benchmarks/offline_bs1.py)."""
    from benchmarks.record import RESULTS_DIR, make_record
    mine, theirs = offline["ttft_bs1_ms"], args.vllm_ttft_bs1_ms
    rec = make_record("vs_vllm", {"case": "ttft_bs1", "input_len": 128, "batch": 1,
                                  "model": "llama3-8b shape, dummy weights", "vllm": "0.26.0",
                                  "method": offline["method"],
                                  "vllm_source": args.vllm_ttft_bs1_source, "note": args.note},
                      {"speedup": theirs / mine, "pagedserve": {"ttft_bs1_ms": mine,
                                                                "runs_ms": offline["ttft_bs1_all_ms"],
                                                                "decode_bs1_ms": offline["decode_bs1_ms"]},
                       "vllm": {"ttft_bs1_ms": theirs}})
    for k in ("device", "versions"):  # the date stays the recording's: bs1 ran separately
        rec[k] = run[k]
    rec["git_sha"] = args.offline_bs1_sha or run["git_sha"]
    with open(os.path.join(RESULTS_DIR, "vs_vllm.jsonl"), "a") as f:
        f.write(json.dumps(rec) + "\n")
    print("ttft_bs1", f"speedup {theirs / mine:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start")
    s.add_argument("--model-dir", required=True)
    s.add_argument("--servers", default="pagedserve,vllm")
    s.add_argument("--vllm-cmd", default="python3 -m vllm.entrypoints.cli.main")
    s.add_argument("--vllm-args", default="")
    s.add_argument("--pagedserve-args", default="")
    s.add_argument("--gpu-memory-utilization", type=float, default=0.45)
    s.add_argument("--timeout", type=float, default=400)
    b = sub.add_parser("bench")
    b.add_argument("--cases", default=",".join(CASES))
    b.add_argument("--order", default="pagedserve,vllm")
    b.add_argument("--rounds", type=int, default=1)
    b.add_argument("--max-requests", type=int, default=None, help="cap per case (smoke runs)")
    b.add_argument("--round-offset", type=int, default=0)
    b.add_argument("--results", default="/tmp/vs_vllm_runs.json")
    st = sub.add_parser("stop")
    st.add_argument("--wait", type=float, default=10.0)
    r = sub.add_parser("record")
    r.add_argument("results")
    r.add_argument("--note", default=None)
    r.add_argument("--offline-bs1", default=None, help="offline_bs1.py's JSON (pagedserve)")
    r.add_argument("--offline-bs1-sha", default=None, help="code it measured (default: the runs')")
    r.add_argument("--vllm-ttft-bs1-ms", type=float, default=None)
    r.add_argument("--vllm-ttft-bs1-source", default=None)
    for p in (b, r):
        p.add_argument("--workload", default="sharegpt_like")
    b.add_argument("--workload-dir", default=os.path.join(ROOT, "..", "shared", "workloads"))
    args = ap.parse_args()
    {"start": start, "bench": bench, "stop": stop, "record": record}[args.cmd](args)


if __name__ == "__main__":
    main()
