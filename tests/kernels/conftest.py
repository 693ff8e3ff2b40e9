"""Kernel tests: on a machine without CUDA, run Triton through its CPU interpreter.

TRITON_INTERPRET must be set before Triton is imported (it is read when kernels are decorated),
so it is set here, at collection time, before any test module imports a kernel.
"""
from __future__ import annotations

import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture(autouse=True)
def _fresh_seed(request: pytest.FixtureRequest) -> None:
    """Fresh but reproducible random inputs per test: seed from the test's own id."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
