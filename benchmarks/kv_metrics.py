"""KV-cache memory metrics computed from `LLM.stats()` snapshots taken before and after a run.

Keys read (each optional; a metric whose keys are absent is reported as None and its keys are
listed under `missing_stats`):

- `num_preemptions`: cumulative count of preemptions.
- `num_steps`: cumulative number of engine steps.
- `kv_slots_allocated`: slots (block_size x physical blocks in use) at each step, either a list with
  one entry per step or a running sum over steps.
- `kv_slots_used`: slots holding a token's K/V at each step (a shared slot counted once); list or
  running sum, the same form as `kv_slots_allocated`.
- `logical_blocks`: blocks the running sequences would hold without sharing (sum over sequences of
  their block-table lengths) at each step; list or running sum.
- `physical_blocks`: distinct device blocks in use at each step; list or running sum.
- `peak_blocks`: the most physical device blocks in use at once.
- `peak_logical_blocks`: the most logical blocks at once.
- `peak_running_requests`: the most requests running in one step.

Lists are sliced after the "before" snapshot's length; sums and counts are differenced; peaks are
taken as they are (build a fresh engine when a peak must cover one run only).

Where the engine keeps running sums only, a `StepProbe` wrapped around `llm.llm_engine.step` reads
`stats()` after every step and turns the sums into per-step series (and `num_running` into the
peak of running requests), so waste is a true mean over steps and logical peaks are known.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Optional

Number = float | int


def snapshot(llm: Any) -> dict[str, Any]:
    """A deep copy of `llm.stats()` (empty when the engine has no stats)."""
    stats = getattr(llm, "stats", None)
    if stats is None:
        return {}
    try:
        return copy.deepcopy(dict(stats()))
    except Exception:  # stats are informative; a broken one must not sink the benchmark
        return {}


def _series(before: dict, after: dict, key: str) -> Optional[list[Number] | Number]:
    """The run's per-step list, or its sum over steps when the engine keeps running sums."""
    if key not in after:
        return None
    val = after[key]
    if isinstance(val, (list, tuple)):
        prev = before.get(key) or []
        return list(val[len(prev):])
    if isinstance(val, (int, float)):
        return val - before.get(key, 0)
    return None


def _counter(before: dict, after: dict, key: str) -> Optional[Number]:
    if not isinstance(after.get(key), (int, float)):
        return None
    return after[key] - before.get(key, 0)


def _fraction_saved(small: list[Number] | Number | None, big: list[Number] | Number | None,
                    ) -> tuple[Optional[float], Optional[float]]:
    """(1 - sum(small)/sum(big), mean over steps of 1 - small/big): the second needs lists."""
    if small is None or big is None:
        return None, None
    if isinstance(small, list) and isinstance(big, list):
        pairs = [(s, b) for s, b in zip(small, big) if b > 0]
        if not pairs:
            return None, None
        weighted = 1.0 - sum(s for s, _ in pairs) / sum(b for _, b in pairs)
        mean = sum(1.0 - s / b for s, b in pairs) / len(pairs)
        return weighted, mean
    if isinstance(small, list) or isinstance(big, list):
        return None, None
    if big <= 0:
        return None, None
    return 1.0 - small / big, None


def _pct(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(100.0 * x, 3)


def kv_metrics(before: dict[str, Any], after: dict[str, Any],
               probe: Optional["StepProbe"] = None) -> dict[str, Any]:
    """Waste %, sharing savings %, peaks and preemptions of the run between two snapshots.

    - `kv_waste_pct`: allocated-but-unused slots over allocated slots, averaged over steps (the
      mean of per-step ratios when the engine gives lists, else slot-weighted over steps).
    - `sharing_saved_pct`: 1 - physical/logical blocks averaged the same way: the KV memory the
      run saved against the same sequences holding private copies.
    - `peak_sharing_saved_pct`: 1 - peak physical / peak logical blocks.
    """
    out: dict[str, Any] = {}
    if probe is not None and probe.per_step_s:
        steps = sorted(probe.per_step_s)
        out["step_time_mean_ms"] = 1000.0 * sum(steps) / len(steps)
        out["step_time_p50_ms"] = 1000.0 * steps[len(steps) // 2]
    before, after = probed_stats(before, after, probe)
    missing = [k for k in ("num_preemptions", "num_steps", "kv_slots_allocated", "kv_slots_used",
                           "logical_blocks", "physical_blocks", "peak_blocks",
                           "peak_logical_blocks", "peak_running_requests") if k not in after]
    out["preemptions"] = _counter(before, after, "num_preemptions")
    out["num_steps"] = _counter(before, after, "num_steps")
    weighted, mean = _fraction_saved(_series(before, after, "kv_slots_used"),
                                     _series(before, after, "kv_slots_allocated"))
    out["kv_waste_pct"] = _pct(mean if mean is not None else weighted)
    out["kv_waste_pct_slot_weighted"] = _pct(weighted)
    weighted, mean = _fraction_saved(_series(before, after, "physical_blocks"),
                                     _series(before, after, "logical_blocks"))
    out["sharing_saved_pct"] = _pct(mean if mean is not None else weighted)
    out["sharing_saved_pct_block_weighted"] = _pct(weighted)
    peak_phys, peak_log = after.get("peak_blocks"), after.get("peak_logical_blocks")
    out["peak_blocks"] = peak_phys
    out["peak_logical_blocks"] = peak_log
    out["peak_sharing_saved_pct"] = (_pct(1.0 - peak_phys / peak_log)
                                     if isinstance(peak_phys, (int, float))
                                     and isinstance(peak_log, (int, float)) and peak_log > 0
                                     else None)
    out["peak_running_requests"] = after.get("peak_running_requests")
    out["num_total_blocks"] = after.get("num_total_blocks")
    out["missing_stats"] = missing
    return out


_SUMMED = ("kv_slots_allocated", "kv_slots_used", "logical_blocks", "physical_blocks")


class StepProbe:
    """Context manager recording `stats()` after each engine step of `llm.generate`.

    Reading stats costs microseconds against a step's milliseconds; `per_step_s` (wall time of each
    step, stats read excluded) is kept for profiling.
    """

    def __init__(self, llm: Any, enabled: bool = True):
        self.engine = getattr(llm, "llm_engine", None)
        self.enabled = bool(enabled and self.engine is not None and hasattr(self.engine, "step")
                            and hasattr(self.engine, "stats"))
        self.samples: list[dict[str, Any]] = []
        self.per_step_s: list[float] = []
        self._orig: Any = None

    def __enter__(self) -> "StepProbe":
        if not self.enabled:
            return self
        orig = self._orig = self.engine.step
        stats = self.engine.stats

        def step(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = orig(*args, **kwargs)
            self.per_step_s.append(time.perf_counter() - t0)
            self.samples.append(stats())
            return out

        self.engine.step = step
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            del self.engine.step  # back to the class's method

    def series(self, before: dict[str, Any]) -> dict[str, Any]:
        """Per-step lists from the samples, keyed like the stats they came from."""
        if not self.samples:
            return {}
        steps = [before] + self.samples
        # Steps where the engine did no accounted work (num_steps unchanged) are dropped.
        real = [i for i in range(1, len(steps))
                if steps[i].get("num_steps", i) != steps[i - 1].get("num_steps", i - 1)]
        out: dict[str, Any] = {}
        for key in _SUMMED:
            if isinstance(self.samples[-1].get(key), (int, float)):
                out[key] = [steps[i][key] - steps[i - 1].get(key, 0) for i in real]
        if "num_running" in self.samples[-1]:
            out["num_running"] = [steps[i].get("num_running", 0) for i in real]
        return out


def probed_stats(before: dict[str, Any], after: dict[str, Any],
                 probe: Optional[StepProbe]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(before, after) with the probe's per-step series standing in for running sums, and the
    peaks derivable from them filled in where the engine does not report its own."""
    if probe is None or not probe.samples:
        return before, after
    before, after = dict(before), dict(after)
    series = probe.series(before)
    for key in _SUMMED:
        if key in series and not isinstance(after.get(key), list):
            before[key], after[key] = [], series[key]
    if "peak_logical_blocks" not in after and series.get("logical_blocks"):
        after["peak_logical_blocks"] = max(series["logical_blocks"])
    if "peak_running_requests" not in after and series.get("num_running"):
        after["peak_running_requests"] = max(series["num_running"])
    return before, after
