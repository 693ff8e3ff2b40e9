"""Tuned launch tables: lookup by shape and row bucket, and the W4A16 GEMM following them."""
from __future__ import annotations

import json

import torch

from engine.quantization.base import pack_int32
from gpu_kernels import tuned_configs
from gpu_kernels.w4a16_gemm import w4a16_gemm, w4a16_gemm_ref
from tests.kernels._paged import rel_err

GEMV = {"BLOCK_N": 32, "BLOCK_K": 64, "SPLIT_K": 2}
TILE = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 64, "SPLIT_K": 2}


def _table(tmp_path, monkeypatch, kernel="w4a16_gemm"):
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"kernel": kernel, "device": "any", "entries": [
        {"m": 4, "n": 80, "k": 256, "bits": 4, "group": 64, "config": TILE},
        {"m": 64, "n": 80, "k": 256, "bits": 4, "group": 64, "config": GEMV}]}))
    monkeypatch.setenv("PAGEDSERVE_TUNED_CONFIGS", str(path))
    tuned_configs.clear_cache()


def test_lookup_by_shape_and_bucket(tmp_path, monkeypatch, device):
    _table(tmp_path, monkeypatch)
    dev = torch.device(device)
    look = lambda m, n=80: tuned_configs.tuned_config("w4a16_gemm", dev, m, n, 256, 4, 64)  # noqa
    assert look(1) == TILE and look(4) == TILE
    assert look(5) == GEMV and look(64) == GEMV
    assert look(65) is None and look(1, n=81) is None
    assert tuned_configs.tuned_config("other", dev, 1, 80, 256, 4, 64) is None
    tuned_configs.clear_cache()


def test_wrong_kernel_table_is_ignored(tmp_path, monkeypatch, device):
    _table(tmp_path, monkeypatch, kernel="something_else")
    assert tuned_configs.tuned_config("w4a16_gemm", torch.device(device), 1, 80, 256, 4,
                                      64) is None
    tuned_configs.clear_cache()


def test_gemm_follows_the_table(tmp_path, monkeypatch, device):
    """Rows 1-4 take the tile kernel and 5-64 the GEMV here (the reverse of the heuristic):
    both give the reference's product."""
    _table(tmp_path, monkeypatch)
    q = torch.randint(0, 16, (256, 80), dtype=torch.int32, device=device)
    qw = pack_int32(q, 4, dim=0)
    scales = torch.rand(4, 80, device=device) * 0.02
    zeros = torch.randint(0, 16, (4, 80), device=device).float()
    for m in (2, 9):
        x = torch.randn(m, 256, device=device)
        out = w4a16_gemm(x, qw, scales, zeros, 4, 64)
        assert rel_err(out, w4a16_gemm_ref(x, qw, scales, zeros, 4, 64)) < 1e-5
    tuned_configs.clear_cache()
