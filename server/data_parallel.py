"""Data parallelism: `--data-parallel-size M` engine cores (each its own process, each possibly a
tensor-parallel group) behind one API server.

`DataParallelEngineClient` is an `EngineClient` over M `AsyncEngineClient`s. Each request goes to
the core with the least outstanding work (requests in flight), unless a core recently served a
prompt sharing a prefix with it and that core's load is within `prefix_slack` of the least
loaded: then it goes there, where its prefix is likely still cached (`PrefixRouter`). Aborts go to
the core that holds the request. Every core keeps its own death policy (restart or give up); a
core that is gone for good makes the whole server report dead. Stats are summed over cores;
`/metrics` also carries per-core gauges labelled `engine`.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from typing import Any, Callable, Optional

from prometheus_client import Gauge

from engine.sampling_params import SamplingParams
from server.engine_client import AsyncEngineClient, EngineClient

# Text prompts are routed on prefixes of this many characters (token-id prompts on blocks of
# this many ids): a cheap proxy for the core's KV block hashes, computed before tokenization.
PREFIX_CHUNK_CHARS = 64
PREFIX_CHUNK_IDS = 16
_PER_ENGINE = {"num_running": "num_requests_running", "num_waiting": "num_requests_waiting",
               "kv_cache_usage": "kv_cache_usage_perc", "requests_routed": "requests_routed"}


class PrefixRouter:
    """Remembers which core last served each prompt prefix (chained chunk hashes, LRU)."""

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self._owner: OrderedDict[bytes, int] = OrderedDict()

    @staticmethod
    def chunk_hashes(prompt: Optional[str], ids: Optional[list[int]]) -> list[bytes]:
        if ids is not None:
            step = PREFIX_CHUNK_IDS
            parts = [repr(ids[i:i + step]).encode() for i in range(0, len(ids) - step + 1, step)]
        else:
            text, step = prompt or "", PREFIX_CHUNK_CHARS
            parts = [text[i:i + step].encode() for i in range(0, len(text) - step + 1, step)]
        hashes, h = [], b""
        for part in parts:
            h = hashlib.blake2b(h + part, digest_size=16).digest()
            hashes.append(h)
        return hashes

    def owner(self, hashes: list[bytes]) -> Optional[tuple[int, int]]:
        """(core, matched chunks) of the longest remembered prefix, or None."""
        for n in range(len(hashes), 0, -1):
            core = self._owner.get(hashes[n - 1])
            if core is not None:
                return core, n
        return None

    def record(self, hashes: list[bytes], core: int) -> None:
        for h in hashes:
            self._owner[h] = core
            self._owner.move_to_end(h)
        while len(self._owner) > self.capacity:
            self._owner.popitem(last=False)


class DataParallelEngineClient(EngineClient):
    def __init__(self, make_client: Callable[[int, Any], AsyncEngineClient], size: int,
                 metrics: Any = None, prefix_slack: int = 4):
        if size < 1:
            raise ValueError("data_parallel_size: must be >= 1")
        self.metrics = metrics
        self.prefix_slack = prefix_slack
        self.router = PrefixRouter()
        self._stats: list[dict] = [{} for _ in range(size)]
        self.clients = [make_client(i, _CoreMetrics(self, i)) for i in range(size)]
        self.config = self.clients[0].config
        self.model_config = self.clients[0].model_config
        self._where: dict[str, int] = {}
        self.routed = [0] * size  # requests sent to each core (tests, dashboard)
        self._gauges = None
        if metrics is not None:
            self._gauges = {key: Gauge("pagedserve:engine_" + name, f"{name} per engine core",
                                       ["model_name", "engine"], registry=metrics.registry)
                            for key, name in _PER_ENGINE.items()}
            for i in range(size):
                self._gauges["requests_routed"].labels(metrics.model_name, str(i)).set(0)

    # ---- properties the serving layer reads ------------------------------------------------
    @property
    def tokenizer(self):
        return self.clients[0].tokenizer

    @property
    def input_processor(self):
        return self.clients[0].input_processor

    @property
    def skip_tokenizer_init(self):
        return self.clients[0].skip_tokenizer_init

    def __getattr__(self, name: str) -> Any:  # other read-only attributes: the first core's
        return getattr(self.__dict__["clients"][0], name)

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        await self.clients[0].start()  # loads the tokenizer once
        for c in self.clients[1:]:
            c.tokenizer = c.tokenizer or self.clients[0].tokenizer
        await asyncio.gather(*(c.start() for c in self.clients[1:]))

    async def shutdown(self) -> None:
        await asyncio.gather(*(c.shutdown() for c in self.clients))

    def health_problem(self) -> Optional[str]:
        for i, c in enumerate(self.clients):
            problem = c.health_problem()
            if problem is not None:
                return f"engine {i}: {problem}"
        return None

    @property
    def num_in_flight(self) -> int:
        return sum(c.num_in_flight for c in self.clients)

    # ---- routing ---------------------------------------------------------------------------
    def choose(self, prompt: Optional[str], ids: Optional[list[int]]) -> tuple[int, list]:
        loads = [c.num_in_flight for c in self.clients]
        least = min(range(len(loads)), key=lambda i: (loads[i], self.routed[i]))
        hashes = self.router.chunk_hashes(prompt, ids)
        found = self.router.owner(hashes)
        if found is not None and loads[found[0]] <= loads[least] + self.prefix_slack:
            return found[0], hashes
        return least, hashes

    async def add_request(self, request_id: str, prompt: Optional[str],
                          prompt_token_ids: Optional[list[int]], params: SamplingParams,
                          add_special_tokens: bool = True):
        if request_id in self._where:
            raise ValueError(f"request_id: '{request_id}' is already in flight")
        core, hashes = self.choose(prompt, prompt_token_ids)
        self._where[request_id] = core
        self.routed[core] += 1
        try:
            stream = await self.clients[core].add_request(
                request_id, prompt, prompt_token_ids, params, add_special_tokens)
        except BaseException:
            self._where.pop(request_id, None)
            raise
        self.router.record(hashes, core)
        if self._gauges is not None:
            self._gauges["requests_routed"].labels(self.metrics.model_name,
                                                   str(core)).set(self.routed[core])
        return stream

    def abort(self, request_id: str) -> None:
        core = self._where.pop(request_id, None)
        if core is not None:
            self.clients[core].abort(request_id)
        else:  # a stream finishing calls abort too; the owner was forgotten: tell every core
            for c in self.clients:
                c.abort(request_id)

    # ---- delegated -------------------------------------------------------------------------
    async def tokenize(self, text: str, add_special_tokens: bool = True,
                       check_length: bool = False, field: str = "prompt") -> list[int]:
        return await self.clients[0].tokenize(text, add_special_tokens, check_length, field)

    def default_max_tokens(self, prompt_len: int, num_seqs: int) -> Optional[int]:
        return min((m for m in (c.default_max_tokens(prompt_len, num_seqs)
                                for c in self.clients) if m is not None), default=None)

    async def get_stats(self) -> dict:
        per = await asyncio.gather(*(c.get_stats() for c in self.clients))
        return self._sum(per)

    def num_waiting(self, adding: int = 0) -> int:
        return sum(c.num_waiting() for c in self.clients) + adding

    def reserve(self, num_prompts: int) -> None:
        least = min(self.clients, key=lambda c: c.num_in_flight)
        least.reserve(num_prompts)

    def fail_in_flight(self, error: BaseException) -> None:
        for c in self.clients:
            c.fail_in_flight(error)

    # ---- stats -----------------------------------------------------------------------------
    def _sum(self, per: list[dict]) -> dict:
        total: dict = {}
        for stats in per:
            for key, value in stats.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    total[key] = total.get(key, 0) + value
                else:
                    total.setdefault(key, value)
        if per and "kv_cache_usage" in total:
            total["kv_cache_usage"] = total["kv_cache_usage"] / len(per)
        total["engines"] = [dict(s) for s in per]
        total["requests_routed"] = list(self.routed)
        return total

    def core_stats(self, core: int, stats: dict) -> None:
        self._stats[core] = dict(stats)
        if self.metrics is None:
            return
        summed = self._sum(self._stats)
        self.metrics.update_engine_stats(summed)
        for key, gauge in (self._gauges or {}).items():
            if key in stats:
                gauge.labels(self.metrics.model_name, str(core)).set(stats[key])


class _CoreMetrics:
    """What one core's client reports: latencies to the shared metrics, engine stats to the
    data-parallel client (which labels and sums them)."""

    def __init__(self, dp: DataParallelEngineClient, core: int):
        self._dp, self._core = dp, core

    def update_engine_stats(self, stats: dict) -> None:
        self._dp.core_stats(self._core, stats)

    def __getattr__(self, name: str) -> Any:
        metrics = self._dp.metrics
        if metrics is None:
            return lambda *a, **k: None
        return getattr(metrics, name)
