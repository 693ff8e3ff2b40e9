"""The fused per-token INT8 quantization kernel against its torch reference."""
from __future__ import annotations

import pytest
import torch

from gpu_kernels.quant_int8_rows import quant_int8_rows, quant_int8_rows_ref


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows,cols", [(1, 64), (5, 300), (3, 4096), (2, 5000)])
def test_matches_reference(device, dtype, rows, cols):
    x = (torch.randn(rows, cols) * torch.logspace(-3, 2, rows)[:, None]).to(dtype).to(device)
    x[0, cols // 2] = 0
    q, s = quant_int8_rows(x)
    q_ref, s_ref = quant_int8_rows_ref(x)
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    torch.testing.assert_close(s, s_ref, rtol=1e-6, atol=0)
    # x / scale may differ in its last fp32 bit (division rounding): a tie can then go either way
    diff = (q.int() - q_ref.int()).abs().cpu()
    assert int(diff.max()) <= 1
    assert float((diff > 0).float().mean()) < 0.01
    assert int(q.abs().max()) == 127  # the row extreme maps to +-127


def test_half_way_values_round_to_even(device):
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, 126.5]], device=device)
    q, s = quant_int8_rows(x)
    assert float(s) == 1.0
    assert q.cpu().tolist() == [[127, 0, 2, 2, 0, -2, 126]]


def test_zero_rows_and_bad_input(device):
    q, s = quant_int8_rows(torch.zeros(4, 128, device=device))
    assert int(q.abs().max()) == 0 and bool((s == 1e-12).all())
    q, s = quant_int8_rows(torch.zeros(0, 128, device=device))
    assert q.shape == (0, 128) and s.shape == (0,)
    with pytest.raises(ValueError, match="rows, cols"):
        quant_int8_rows(torch.zeros(2, 3, 4, device=device))
    with pytest.raises(TypeError):
        quant_int8_rows(torch.zeros(2, 8, dtype=torch.int32, device=device))
