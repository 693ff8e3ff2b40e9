"""The live dashboard: block-map encoding, the stats feed, and the page in headless Chromium
(Playwright driving Debian's `chromium`) against the default server while requests run."""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest


def test_pool_map_codes_every_block_state():
    from engine.block_pool import BlockPool
    from engine.kv_snapshot import pool_map

    pool = BlockPool(6)
    a, b, c, d = (pool.allocate() for _ in range(4))
    pool.incref(b)  # shared
    pool.register(c, 123)  # cached, in use
    pool.register(d, 456)
    pool.decref(d)  # cached, free
    states = {a: "1", b: "2", c: "3", d: "4"}
    expected = "".join(states.get(i, "0") for i in range(6))
    assert pool_map(pool) == expected


def test_metrics_record_one_batch_per_step():
    from server.dashboard import DashboardMetrics

    m = DashboardMetrics("m")
    m.update_engine_stats({"num_steps": 1, "prompt_tokens_total": 10, "generation_tokens_total": 1})
    m.update_engine_stats({"num_steps": 2, "prompt_tokens_total": 30, "generation_tokens_total": 3})
    m.update_engine_stats({"num_steps": 2, "prompt_tokens_total": 30, "generation_tokens_total": 3})
    m.observe_ttft(0.25)
    m.observe_itl(0.01)
    snap = m.snapshot()
    assert [(s["prefill"], s["decode"]) for s in snap["steps"]] == [(20, 2)]
    last = snap["series"][-1]
    assert last["ttft_p50"] == 0.25 and last["itl_p50"] == 0.01


async def test_feeds_over_the_fake_core(fake_client):
    page = await fake_client.get("/dashboard")
    assert page.status_code == 200 and "block-map-gpu" in page.text
    js = await fake_client.get("/dashboard/static/dashboard.js")
    assert js.status_code == 200 and "/dashboard/api/blocks" in js.text
    stats = (await fake_client.get("/dashboard/api/stats")).json()
    assert {"engine", "steps", "series", "model"} <= set(stats)
    blocks = (await fake_client.get("/dashboard/api/blocks")).json()
    assert blocks["gpu"] == "" and blocks["cpu"] == ""  # the fake core has no block pools


def chromium_path() -> str:
    path = os.environ.get("PAGEDSERVE_CHROMIUM") or shutil.which("chromium")
    assert path, "Debian's chromium is needed (apt-get install chromium; make install does it)"
    return path


def test_page_in_headless_chromium_shows_blocks_move(default_server, tmp_path):
    from playwright.sync_api import sync_playwright

    base = default_server.base_url
    stop = threading.Event()

    def load() -> None:  # n=2 shares the prompt's blocks: used and shared cells appear
        while not stop.is_set():
            httpx.post(base + "/v1/completions", timeout=120,
                       json={"prompt": "Tell me a long story about " * 12, "max_tokens": 12,
                             "n": 2, "ignore_eos": True})

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True,
                                     args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1100})
            page.goto(base + "/dashboard")
            page.wait_for_function("Number(document.body.dataset.ticks || 0) >= 1")
            assert page.eval_on_selector("#model", "e => e.textContent") == "SmolLM2-135M-Instruct"
            total = int(page.eval_on_selector("#block-map-gpu", "e => e.dataset.total"))
            assert total > 0
            threads = [threading.Thread(target=load) for _ in range(3)]
            for t in threads:
                t.start()
            signatures, busy = set(), 0
            deadline = time.time() + 60
            try:
                while time.time() < deadline and (len(signatures) < 3 or not busy):
                    time.sleep(0.5)
                    sig, used, shared = page.eval_on_selector(
                        "#block-map-gpu",
                        "e => [e.dataset.signature, +e.dataset.used, +e.dataset.shared]")
                    signatures.add(sig)
                    busy += (used + shared) > 0
                page.wait_for_function("document.querySelector('#batch-chart') !== null")
                shot = Path(os.environ.get("PAGEDSERVE_SCREENSHOT_DIR", tmp_path)) / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
            finally:
                stop.set()
                for t in threads:
                    t.join()
            assert len(signatures) >= 3, "the block map did not change while requests ran"
            assert busy, "no used/shared blocks were ever shown"
            assert shot.stat().st_size > 10_000
            steps = httpx.get(base + "/dashboard/api/stats").json()["steps"]
            assert any(s["prefill"] > 0 for s in steps) and any(s["decode"] > 0 for s in steps)
        finally:
            browser.close()
