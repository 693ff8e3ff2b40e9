"""Kernel tests: on a machine without CUDA, Triton runs through its CPU interpreter
(TRITON_INTERPRET is set by tests/conftest.py, before any module imports a kernel)."""
from __future__ import annotations

import zlib

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture(autouse=True)
def _fresh_seed(request: pytest.FixtureRequest) -> None:
    """Fresh but reproducible random inputs per test: seed from the test's own id."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
