"""What the live dashboard plots, gathered in the HTTP process from what it already sees.

`DashboardMetrics` is the server's `ServerMetrics` plus short histories: each engine step's batch
(prefill vs decode tokens, from the cumulative totals the core sends after every step; a step is
recognised by `num_steps` advancing) and per-second buckets of tokens, TTFT and ITL samples over
the last `window_s` seconds. Nothing here runs in the engine core: the core's step is untouched.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any, Optional

from server.metrics import ServerMetrics

STEP_HISTORY = 300  # engine steps kept for the batch chart
WINDOW_S = 300  # seconds of tokens/s and latency history


def _pct(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class _Second:
    __slots__ = ("prompt", "gen", "ttft", "itl", "finished")

    def __init__(self) -> None:
        self.prompt = self.gen = self.finished = 0
        self.ttft: list[float] = []
        self.itl: list[float] = []


class DashboardMetrics(ServerMetrics):
    def __init__(self, model_name: str, registry: Any = None, window_s: int = WINDOW_S):
        super().__init__(model_name, registry)
        self.window_s = window_s
        self.steps: deque = deque(maxlen=STEP_HISTORY)
        self.seconds: dict[int, _Second] = {}
        self.latest: dict[str, Any] = {}
        self._last: Optional[dict[str, float]] = None

    def _bucket(self) -> _Second:
        now = int(time.time())
        b = self.seconds.get(now)
        if b is None:
            b = self.seconds[now] = _Second()
            for old in [s for s in self.seconds if s < now - self.window_s]:
                del self.seconds[old]
        return b

    def update_engine_stats(self, stats: dict[str, Any]) -> None:
        super().update_engine_stats(stats)
        self.latest = stats
        cur = {k: float(stats.get(k, 0)) for k in
               ("num_steps", "prompt_tokens_total", "generation_tokens_total")}
        last, self._last = self._last, cur
        if last is None or cur["num_steps"] <= last["num_steps"]:
            return  # no step since the previous report (a /metrics scrape, an idle message)
        prefill = max(0.0, cur["prompt_tokens_total"] - last["prompt_tokens_total"])
        decode = max(0.0, cur["generation_tokens_total"] - last["generation_tokens_total"])
        self.steps.append({"t": time.time(), "prefill": int(prefill), "decode": int(decode),
                           "steps": int(cur["num_steps"] - last["num_steps"]),
                           "running": int(stats.get("num_running", 0)),
                           "waiting": int(stats.get("num_waiting", 0))})
        b = self._bucket()
        b.prompt += int(prefill)
        b.gen += int(decode)

    def observe_ttft(self, seconds: float) -> None:
        super().observe_ttft(seconds)
        self._bucket().ttft.append(seconds)

    def observe_itl(self, seconds: float) -> None:
        super().observe_itl(seconds)
        self._bucket().itl.append(seconds)

    def observe_finished(self, finished_reason: str, e2e_seconds: float) -> None:
        super().observe_finished(finished_reason, e2e_seconds)
        self._bucket().finished += 1

    def snapshot(self) -> dict[str, Any]:
        """The JSON feed of GET /dashboard/api/stats."""
        now = int(time.time())
        series = []
        for sec in range(now - self.window_s + 1, now + 1):
            b = self.seconds.get(sec)
            if b is None:
                continue
            series.append({"t": sec, "prompt_tps": b.prompt, "gen_tps": b.gen,
                           "finished": b.finished,
                           "ttft_p50": _pct(b.ttft, 0.5), "ttft_p90": _pct(b.ttft, 0.9),
                           "itl_p50": _pct(b.itl, 0.5), "itl_p90": _pct(b.itl, 0.9)})
        keys = ("num_running", "num_waiting", "num_swapped", "num_preemptions",
                "num_free_blocks", "num_total_blocks", "num_free_cpu_blocks",
                "num_total_cpu_blocks", "kv_cache_usage", "prefix_cache_queries",
                "prefix_cache_hits", "num_steps", "block_size")
        return {"model": self.model_name, "now": time.time(), "window_s": self.window_s,
                "engine": {k: self.latest.get(k) for k in keys},
                "steps": list(self.steps), "series": series}
