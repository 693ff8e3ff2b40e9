"""GPU tests build one engine after another in one process, and an engine sizes its KV pool from
the device's free memory: whatever a finished test left behind (an engine its locals kept alive,
blocks the caching allocator still holds) would count as used by the next one."""
from __future__ import annotations

import gc

import pytest
import torch


@pytest.fixture(autouse=True)
def _release_gpu_memory():
    yield
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
