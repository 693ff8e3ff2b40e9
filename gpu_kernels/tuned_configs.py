"""Tuned kernel launch configurations, read from JSON tables written by the sweeps
(`benchmarks/kernel_bench/w4a16_gemm.py --sweep --write-tuned FILE`).

A table is `{"kernel": name, "device": torch.cuda.get_device_name(), "entries": [{"m", "n", "k",
"bits", "group", "config"}]}`. It is looked up in `$PAGEDSERVE_TUNED_CONFIGS` (a file) or else in
`gpu_kernels/tuned/<kernel>__<device>.json` (device name with non-alphanumerics as `_`); an entry
applies to row counts up to its `m` (the smallest such entry), for exactly its (n, k, bits, group).
Shapes without an entry keep the kernel's own heuristic.
"""
from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Optional

import torch

TUNED_DIR = Path(__file__).parent / "tuned"


@functools.lru_cache(maxsize=None)
def device_slug(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


@functools.lru_cache(maxsize=None)
def _table(kernel: str, slug: str) -> tuple:
    path = os.environ.get("PAGEDSERVE_TUNED_CONFIGS") or str(TUNED_DIR / f"{kernel}__{slug}.json")
    if not os.path.exists(path):
        return ()
    with open(path) as f:
        data = json.load(f)
    if data.get("kernel") != kernel:
        return ()
    return tuple(((e["n"], e["k"], e["bits"], e["group"]), e["m"], json.dumps(e["config"]))
                 for e in data["entries"])


def tuned_config(kernel: str, device: torch.device, m: int, n: int, k: int, bits: int,
                 group: int) -> Optional[dict]:
    """The tuned config for this shape (a fresh dict), or None."""
    found = _lookup(kernel, device_slug(device), m, n, k, bits, group)
    return None if found is None else json.loads(found)


@functools.lru_cache(maxsize=4096)
def shared_tuned_config(kernel: str, device: torch.device, m: int, n: int, k: int, bits: int,
                        group: int) -> Optional[dict]:
    """`tuned_config` parsed once per shape: the same dict on every call (callers on hot paths
    must not mutate it)."""
    return tuned_config(kernel, device, m, n, k, bits, group)


@functools.lru_cache(maxsize=4096)
def _lookup(kernel: str, slug: str, m: int, n: int, k: int, bits: int,
            group: int) -> Optional[str]:
    best = None
    for key, em, cfg in _table(kernel, slug):
        if key == (n, k, bits, group) and em >= m and (best is None or em < best[0]):
            best = (em, cfg)
    return None if best is None else best[1]


def clear_cache() -> None:
    """Forget loaded tables (tests switch `$PAGEDSERVE_TUNED_CONFIGS`)."""
    _table.cache_clear()
    _lookup.cache_clear()
    shared_tuned_config.cache_clear()
