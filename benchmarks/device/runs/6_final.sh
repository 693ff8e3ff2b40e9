#!/bin/bash
# Device call 6: the fused RMSNorm+quant tests after the deterministic-norm change, the GPU
# spec-decode / async-sampling tests (engines freed between tests), then vLLM's n-gram and
# pagedserve's spec_decode.py (vectorised verifier) on the same replay cases.
#     carry: [".carry"]   timeout_s: 600   expect ~6-7 min
source benchmarks/device/prep.sh
export PAGEDSERVE_GIT_SHA=$(cat .carry/scripts/sha)
source benchmarks/device/runs/lib.sh
source benchmarks/device/runs/spec.sh

step fusion_tests 120 $PY -m pytest $T tests/kernels/test_rms_norm_quant.py \
  tests/kernels/test_rms_norm.py
step gpu_tests 120 $PY -m pytest $T tests/gpu/test_gpu_spec_decode.py \
  tests/gpu/test_gpu_async_sampling.py tests/kernels/test_triton_backend.py \
  tests/kernels/test_mixed_graph_layout.py
spec_vs_vllm 120
finish
