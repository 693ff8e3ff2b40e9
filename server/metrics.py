"""Prometheus metrics (vLLM's set and meanings, prefixed `pagedserve:`) and the periodic log line.

Gauges and counters mirror the engine core's `stats()` (counters advance by the difference of its
cumulative totals); latency histograms are observed by the frontend as outputs arrive. Each
`ServerMetrics` owns its registry, so several apps in one process (tests) do not collide.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the app)

logger = logging.getLogger("pagedserve.server")

PREFIX = "pagedserve:"
_TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
_ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0]
_REQUEST_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]

# Core stats key -> counter name (without prefix / _total), for cumulative totals.
_COUNTERS = {
    "prompt_tokens_total": ("prompt_tokens", "Number of prefill tokens processed."),
    "generation_tokens_total": ("generation_tokens", "Number of generation tokens processed."),
    "num_preemptions": ("num_preemptions", "Cumulative number of preemptions."),
    "prefix_cache_queries": ("prefix_cache_queries",
                             "Prefix cache queries, in tokens."),
    "prefix_cache_hits": ("prefix_cache_hits", "Prefix cache hits, in tokens."),
    "spec_decode_num_drafts": ("spec_decode_num_drafts", "Speculative verify chunks run."),
    "spec_decode_num_draft_tokens": ("spec_decode_num_draft_tokens",
                                     "Draft tokens proposed and verified."),
    "spec_decode_num_accepted_tokens": ("spec_decode_num_accepted_tokens",
                                        "Draft tokens accepted by the target."),
}
_GAUGES = {
    "num_running": ("num_requests_running", "Number of requests in model execution batches."),
    "num_waiting": ("num_requests_waiting", "Number of requests waiting to be processed."),
    "num_swapped": ("num_requests_swapped", "Number of requests swapped to CPU."),
}


class ServerMetrics:
    """The metric set of one served model."""

    def __init__(self, model_name: str, registry: Optional[CollectorRegistry] = None):
        self.registry = registry or CollectorRegistry()
        self.model_name = model_name
        labels = ["model_name"]
        reg = self.registry
        self._gauges = {key: Gauge(PREFIX + name, doc, labels, registry=reg).labels(model_name)
                        for key, (name, doc) in _GAUGES.items()}
        kv_usage = Gauge(PREFIX + "kv_cache_usage_perc",
                         "KV-cache usage per pool (gpu: device blocks, cpu: swap space). "
                         "1 means 100 percent usage.", labels + ["pool"], registry=reg)
        self._kv_usage = kv_usage.labels(model_name, "gpu")
        self._cpu_kv_usage = kv_usage.labels(model_name, "cpu")
        self._restarts = Counter(PREFIX + "engine_restarts", "Times the engine core was "
                                 "restarted after it died.", labels,
                                 registry=reg).labels(model_name)
        self._counters = {key: Counter(PREFIX + name, doc, labels, registry=reg).labels(model_name)
                          for key, (name, doc) in _COUNTERS.items()}
        self._last_totals: dict[str, float] = {}
        self._accepted_per_pos = Counter(
            PREFIX + "spec_decode_num_accepted_tokens_per_pos",
            "Accepted draft tokens by position in the draft (0 = first).",
            labels + ["position"], registry=reg)
        self._success = Counter(PREFIX + "request_success", "Count of successfully processed "
                                "requests.", labels + ["finished_reason"], registry=reg)
        self._ttft = Histogram(PREFIX + "time_to_first_token_seconds",
                               "Histogram of time to first token in seconds.", labels,
                               buckets=_TTFT_BUCKETS, registry=reg).labels(model_name)
        self._itl = Histogram(PREFIX + "inter_token_latency_seconds",
                              "Histogram of inter-token latency in seconds.", labels,
                              buckets=_ITL_BUCKETS, registry=reg).labels(model_name)
        self._e2e = Histogram(PREFIX + "e2e_request_latency_seconds",
                              "Histogram of end to end request latency in seconds.", labels,
                              buckets=_REQUEST_BUCKETS, registry=reg).labels(model_name)
        self._queue = Histogram(PREFIX + "request_queue_time_seconds",
                                "Histogram of time spent in WAITING phase for request.", labels,
                                buckets=_REQUEST_BUCKETS, registry=reg).labels(model_name)

    def update_engine_stats(self, stats: dict[str, Any]) -> None:
        for key, gauge in self._gauges.items():
            if key in stats:
                gauge.set(stats[key])
        if "kv_cache_usage" in stats:
            self._kv_usage.set(stats["kv_cache_usage"])
        cpu_total = stats.get("num_total_cpu_blocks")
        if cpu_total:
            self._cpu_kv_usage.set(float(stats.get("num_swapped_out_blocks", 0)) / cpu_total)
        else:
            self._cpu_kv_usage.set(0.0)
        for key, counter in self._counters.items():
            if key not in stats:
                continue
            total = float(stats[key])
            delta = total - self._last_totals.get(key, 0.0)
            if delta > 0:  # totals only grow; a smaller value would mean a restarted core
                counter.inc(delta)
            self._last_totals[key] = max(total, self._last_totals.get(key, 0.0))

        for pos, total in enumerate(stats.get("spec_decode_accepted_by_position") or []):
            key = f"spec_decode_accepted_pos_{pos}"
            delta = float(total) - self._last_totals.get(key, 0.0)
            if delta > 0:
                self._accepted_per_pos.labels(self.model_name, str(pos)).inc(delta)
            self._last_totals[key] = max(float(total), self._last_totals.get(key, 0.0))

    def engine_restarted(self) -> None:
        """A fresh core counts its totals from zero: follow it from there."""
        self._restarts.inc()
        self._last_totals.clear()

    def observe_ttft(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def observe_itl(self, seconds: float) -> None:
        self._itl.observe(seconds)

    def observe_queue_time(self, seconds: float) -> None:
        self._queue.observe(seconds)

    def observe_finished(self, finished_reason: str, e2e_seconds: float) -> None:
        self._success.labels(self.model_name, finished_reason).inc()
        self._e2e.observe(e2e_seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StatsLogger:
    """Logs one line every `interval` seconds while the engine has work (or just had)."""

    def __init__(self, get_stats: Callable[[], Any], interval: float = 5.0):
        self.get_stats = get_stats  # async () -> dict
        self.interval = interval
        self._last: Optional[tuple[float, float, float]] = None

    def format(self, stats: dict[str, Any], now: float) -> Optional[str]:
        """The log line for `stats`, or None when the engine was idle for the whole interval."""
        prompt = float(stats.get("prompt_tokens_total", 0))
        gen = float(stats.get("generation_tokens_total", 0))
        last = self._last
        self._last = (now, prompt, gen)
        if last is None:
            return None
        dt = max(now - last[0], 1e-6)
        prompt_tps, gen_tps = (prompt - last[1]) / dt, (gen - last[2]) / dt
        busy = any(stats.get(k, 0) for k in ("num_running", "num_waiting", "num_swapped"))
        if not busy and prompt_tps == 0 and gen_tps == 0:
            return None
        return (f"Running: {stats.get('num_running', 0)} reqs, "
                f"Waiting: {stats.get('num_waiting', 0)} reqs, "
                f"Swapped: {stats.get('num_swapped', 0)} reqs, "
                f"KV cache usage: {100 * float(stats.get('kv_cache_usage', 0)):.1f}%, "
                f"Prompt throughput: {prompt_tps:.1f} tokens/s, "
                f"Generation throughput: {gen_tps:.1f} tokens/s"
                + (f", Spec decode acceptance: "
                   f"{100 * float(stats['spec_decode_acceptance_rate']):.1f}%"
                   if "spec_decode_acceptance_rate" in stats else ""))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                line = self.format(await self.get_stats(), time.monotonic())
            except Exception:  # logging must never take the server down
                logger.debug("stats logging failed", exc_info=True)
                continue
            if line:
                logger.info(line)
