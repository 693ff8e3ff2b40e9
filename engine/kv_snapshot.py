"""A compact picture of the KV block pools for the live dashboard, taken on demand.

One character per block, in block-id order: `0` free, `1` used by one sequence, `2` shared
(ref count > 1: forked samples, beams, a prefix adopted by several requests), `3` holds a cached
prefix and is in use by one sequence, `4` holds a cached prefix and is free (reusable on a hit,
evicted least-recently-used first). Never computed per step: the server asks for it only while a
dashboard is open, at most a few times a second (~1 µs per block on one CPU core).
"""
from __future__ import annotations

import time
from typing import Any

FREE, USED, SHARED, CACHED_USED, CACHED_FREE = "0", "1", "2", "3", "4"


def pool_map(pool: Any) -> str:
    """The state string of one `BlockPool`."""
    out = []
    append = out.append
    for b in pool.blocks:
        rc = b.ref_count
        if rc > 1:
            append(SHARED)
        elif b.block_hash is not None:
            append(CACHED_USED if rc else CACHED_FREE)
        else:
            append(USED if rc else FREE)
    return "".join(out)


def block_map(core: Any) -> dict[str, Any]:
    """GPU (device) and CPU (swap) pool maps of an engine core (empty for cores without pools),
    and the seconds the snapshot took (`snapshot_s`, which paces the next one)."""
    t0 = time.perf_counter()
    bm = getattr(core, "block_manager", None)
    if bm is None:
        out: dict[str, Any] = {"gpu": "", "cpu": "", "block_size": 0}
    else:
        out = {"gpu": pool_map(bm.gpu), "cpu": pool_map(bm.cpu), "block_size": bm.block_size}
    out["snapshot_s"] = time.perf_counter() - t0
    return out
