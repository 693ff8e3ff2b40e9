"""The live dashboard: `GET /dashboard` (static HTML + JS, no build step) over two JSON feeds.

- `GET /dashboard/api/stats`: queues, KV usage, the last engine steps' batches (prefill vs decode
  tokens), per-second tokens/s and TTFT/ITL percentiles (`DashboardMetrics.snapshot`).
- `GET /dashboard/api/blocks`: the KV block map of the GPU and CPU pools, asked of the engine
  core on demand (`GetBlockMap`) and shared by every viewer for `BLOCK_MAP_TTL_S` or 200 times
  the time the core took for the last snapshot, whichever is longer: open pages cost the core at most 0.5% of
  its time whatever their number and pool size, and nothing when none is open.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from server.dashboard.collector import DashboardMetrics

STATIC = Path(__file__).resolve().parent / "static"
BLOCK_MAP_TTL_S = 0.5
BLOCK_MAP_MAX_SHARE = 0.005  # of the core's time spent on snapshots, at most

__all__ = ["DashboardMetrics", "install_dashboard"]


def install_dashboard(app: FastAPI, engine: Any, metrics: Any) -> None:
    cache: dict[str, Any] = {"t": 0.0, "map": None, "ttl": BLOCK_MAP_TTL_S}
    lock = asyncio.Lock()

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard_page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/dashboard/api/stats", include_in_schema=False)
    async def dashboard_stats():
        if isinstance(metrics, DashboardMetrics):
            return metrics.snapshot()
        return {"model": getattr(metrics, "model_name", ""), "now": time.time(),
                "engine": await engine.get_stats(), "steps": [], "series": []}

    @app.get("/dashboard/api/blocks", include_in_schema=False)
    async def dashboard_blocks():
        async with lock:
            if cache["map"] is None or time.monotonic() - cache["t"] > cache["ttl"]:
                get = getattr(engine, "get_block_map", None)
                cache["map"] = (await get()) if get is not None else {}
                cache["t"] = time.monotonic()
                spent = float(cache["map"].get("snapshot_s", 0.0))
                cache["ttl"] = max(BLOCK_MAP_TTL_S, spent / BLOCK_MAP_MAX_SHARE)
            return {"t": time.time(), **cache["map"]}

    app.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")
