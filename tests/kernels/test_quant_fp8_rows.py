"""The fused per-token FP8 quantization kernel against its torch reference."""
from __future__ import annotations

import pytest
import torch

from gpu_kernels.quant_fp8_rows import quant_fp8_rows, quant_fp8_rows_ref


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows,cols", [(1, 64), (5, 300), (3, 4096), (2, 5000)])
def test_matches_reference(device, dtype, rows, cols):
    x = (torch.randn(rows, cols) * torch.logspace(-3, 2, rows)[:, None]).to(dtype).to(device)
    x[0, cols // 2] = 0  # zeros and a row extreme
    q, s = quant_fp8_rows(x)
    q_ref, s_ref = quant_fp8_rows_ref(x)
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32
    torch.testing.assert_close(s, s_ref, rtol=1e-6, atol=0)
    # e4m3 rounding of x / scale: equal, or one e4m3 step apart where the quotient's last fp32
    # bit differs (division rounding).
    a, b = q.float().cpu(), q_ref.float().cpu()
    diff = (a - b).abs()
    step = torch.maximum(b.abs(), a.abs()) * 2 ** -3 + 2 ** -9
    assert bool((diff <= step).all())
    assert float((diff > 0).float().mean()) < 0.01
    assert float(a.abs().max()) <= 448.0


def test_zero_rows_and_bad_input(device):
    q, s = quant_fp8_rows(torch.zeros(4, 128, device=device))
    assert float(q.float().abs().max()) == 0.0 and bool((s == 1e-12).all())
    q, s = quant_fp8_rows(torch.zeros(0, 128, device=device))
    assert q.shape == (0, 128) and s.shape == (0,)
    with pytest.raises(ValueError, match="rows, cols"):
        quant_fp8_rows(torch.zeros(2, 3, 4, device=device))
