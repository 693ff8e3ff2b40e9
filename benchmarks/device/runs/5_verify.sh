#!/bin/bash
# Device call 5: the GPU tests after the short-query change (verify chunks attend as decode rows,
# engine/model_inputs.py), the fused-quant diagnostic, then vLLM's n-gram and pagedserve's
# spec_decode.py on the same replay cases.   carry: [".carry"]   timeout_s: 600   expect ~8 min
source benchmarks/device/prep.sh
export PAGEDSERVE_GIT_SHA=$(cat .carry/scripts/sha)
source benchmarks/device/runs/lib.sh
source benchmarks/device/runs/spec.sh

step gpu_tests 200 $PY -m pytest $T tests/gpu/test_gpu_spec_decode.py \
  tests/gpu/test_gpu_async_sampling.py tests/gpu/test_gpu_engine.py \
  tests/kernels/test_triton_backend.py tests/kernels/test_mixed_graph_layout.py
step quant_diag 60 $PY benchmarks/device/diag_rms_norm_quant.py
spec_vs_vllm 120
finish
