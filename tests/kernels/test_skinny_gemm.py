"""The 16-bit skinny GEMM (decode-sized linears) against its fp32 reference."""
from __future__ import annotations

import pytest
import torch

from gpu_kernels.skinny_gemm import skinny_gemm, skinny_gemm_ref

CONFIGS = [
    None,  # the heuristic (splits K at these sizes)
    {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "SPLIT_K": 1},
    {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "SPLIT_K": 3},  # ragged last split
]


def _close(out: torch.Tensor, ref: torch.Tensor) -> bool:
    # One rounding of an fp32 sum: at most one unit in the last place of the 16-bit output.
    ulp = 2.0 ** -7 if out.dtype == torch.bfloat16 else 2.0 ** -10
    return bool(((out.float() - ref.float()).abs() <= ulp * ref.float().abs() + 1e-6).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,n,k", [(1, 48, 96), (3, 40, 200), (16, 64, 130)])
@pytest.mark.parametrize("cfg", range(len(CONFIGS)))
def test_matches_reference(device, dtype, m, n, k, cfg):
    x = torch.randn(m, k, device=device).to(dtype)
    w = (torch.randn(n, k, device=device) * 0.05).to(dtype)
    bias = torch.randn(n, device=device).to(dtype)
    for b in (None, bias):
        out = skinny_gemm(x, w, b, config=CONFIGS[cfg])
        assert out.shape == (m, n) and out.dtype == dtype
        assert _close(out, skinny_gemm_ref(x, w, b))


def test_split_k_calls_leave_the_workspace_zeroed(device):
    from gpu_kernels import splitk

    x = torch.randn(4, 256, device=device).to(torch.bfloat16)
    w = torch.randn(80, 256, device=device).to(torch.bfloat16)
    cfg = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32, "SPLIT_K": 4}
    first = skinny_gemm(x, w, config=cfg)
    other = skinny_gemm(x[:1], w[:48], config={**cfg, "SPLIT_K": 2})
    again = skinny_gemm(x, w, config=cfg)
    ws, cnt = splitk._WORKSPACES[x.device]
    assert int((ws != 0).sum()) == 0 and int((cnt != 0).sum()) == 0
    assert torch.equal(first, again) and _close(other, skinny_gemm_ref(x[:1], w[:48]))


def test_rejects_bad_shapes(device):
    x = torch.randn(17, 32, device=device).to(torch.bfloat16)
    w = torch.randn(8, 32, device=device).to(torch.bfloat16)
    with pytest.raises(ValueError, match="at most 16 rows"):
        skinny_gemm(x, w)
    with pytest.raises(TypeError, match="16-bit"):
        skinny_gemm(x[:2].float(), w.float())
    with pytest.raises(ValueError, match=r"\[M, K\]"):
        skinny_gemm(x[:2], w[:, :16])
    with pytest.raises(ValueError, match="bias"):
        skinny_gemm(x[:2], w, torch.zeros(9, device=device).to(torch.bfloat16))
    assert skinny_gemm(x[:0], w).shape == (0, 8)


@pytest.mark.gpu
def test_dense_linear_follows_the_tuned_table(tmp_path, monkeypatch):
    """Linear layers run the skinny GEMM exactly where the table has a kernel config for the
    shape and row count, and cuBLAS where it says `library` or has no entry."""
    import json

    import torch.nn.functional as F

    from engine.quantization.unquantized import dense_linear
    from gpu_kernels import tuned_configs

    dev = torch.device("cuda")
    cfg = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 128, "SPLIT_K": 2, "num_warps": 4,
           "num_stages": 3}
    table = {"kernel": "skinny_gemm", "device": torch.cuda.get_device_name(dev), "entries": [
        {"m": 4, "n": 256, "k": 512, "bits": 16, "group": 0, "config": cfg},
        {"m": 16, "n": 256, "k": 512, "bits": 16, "group": 0, "config": {"library": True}}]}
    path = tmp_path / "table.json"
    path.write_text(json.dumps(table))
    monkeypatch.setenv("PAGEDSERVE_TUNED_CONFIGS", str(path))
    tuned_configs.clear_cache()
    try:
        w = torch.randn(256, 512, device=dev).to(torch.bfloat16)
        x = torch.randn(16, 512, device=dev).to(torch.bfloat16)
        assert torch.equal(dense_linear(x[:3], w), skinny_gemm(x[:3], w, config=cfg))
        assert torch.equal(dense_linear(x[:9], w), F.linear(x[:9], w))
        assert torch.equal(dense_linear(x[:3], w[:128]), F.linear(x[:3], w[:128]))  # no entry
    finally:
        tuned_configs.clear_cache()
