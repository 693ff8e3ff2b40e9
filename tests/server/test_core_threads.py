"""Torch threads of the engine core process, by device (server/core_process.set_cpu_threads)."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from server.core_process import set_cpu_threads


def _config(kind: str):
    return SimpleNamespace(runner=SimpleNamespace(device=torch.device(kind)))


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_gpu_engine_core_runs_one_thread_by_default(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    set_cpu_threads(_config("cuda"), None)
    assert torch.get_num_threads() == 1
    set_cpu_threads(_config("cuda"), 2)  # --cpu-threads wins
    assert torch.get_num_threads() == 2


def test_gpu_engine_core_keeps_the_users_omp_setting(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    set_cpu_threads(_config("cuda"), None)
    assert torch.get_num_threads() == 2


def test_cpu_engine_core_leaves_one_core(monkeypatch):
    set_cpu_threads(_config("cpu"), None)
    assert torch.get_num_threads() == max(1, (os.cpu_count() or 2) - 1)
    set_cpu_threads(_config("cpu"), 1)
    assert torch.get_num_threads() == 1
