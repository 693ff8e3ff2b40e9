"""The CUDA paths of the W8A8 linear methods (fused per-token quantization + Triton scaled GEMM,
or cuBLAS above the row threshold) against their CPU reference, at decode and prefill row counts."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.quantization.fp8 import Fp8DynamicLinearMethod
from engine.quantization.w8a8 import Int8W8A8LinearMethod

pytestmark = pytest.mark.gpu


def _layer(method, k: int, n: int, device: str) -> nn.Module:
    layer = nn.Module()
    layer.output_sizes = [n]
    method.create_weights(layer, k, [n], torch.bfloat16)
    gen = torch.Generator(device="cpu").manual_seed(0)
    method.init_dummy(layer, gen)
    layer.to(device)
    method.process_weights_after_loading(layer)
    return layer


@pytest.mark.parametrize("rows", [1, 7, 16, 64, 65, 300])
def test_int8_cuda_equals_cpu_reference(rows):
    method = Int8W8A8LinearMethod()
    gpu, cpu = _layer(method, 512, 384, "cuda"), _layer(method, 512, 384, "cpu")
    x = torch.randn(rows, 512, dtype=torch.bfloat16)
    bias = torch.randn(384, dtype=torch.bfloat16)
    out = method.apply(gpu, x.cuda(), bias.cuda()).cpu()
    ref = method.apply(cpu, x, bias)
    # integer products are exact on both sides; a quantized activation may differ by one step
    # where x / scale rounds differently in its last bit (rare)
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    assert float((out.float() - ref.float()).abs().gt(1e-6).float().mean()) < 0.05


@pytest.mark.parametrize("rows", [1, 16, 64, 65, 300])
def test_fp8_cuda_close_to_cpu_reference(rows):
    method = Fp8DynamicLinearMethod()
    gpu, cpu = _layer(method, 512, 384, "cuda"), _layer(method, 512, 384, "cpu")
    x = torch.randn(rows, 512, dtype=torch.bfloat16)
    out = method.apply(gpu, x.cuda(), None).cpu().float()
    ref = method.apply(cpu, x.float(), None).float()
    assert float((out - ref).abs().max() / ref.abs().max()) < 3e-2
