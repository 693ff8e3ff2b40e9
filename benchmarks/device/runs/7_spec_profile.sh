#!/bin/bash
# Device call 7 (sixth session): the fused RMSNorm+quant tests after the float64 sum of squares,
# a profile of n-gram speculation at batch 32 (benchmarks/profile_spec.py; plain decode at the
# same batch beside it), the GPU spec-decode / async tests, then n-gram speculation vs vLLM
# (the verify outcome now read at finish).
#     carry: [".carry"]   timeout_s: 600   expect ~8-9 min
source benchmarks/device/prep.sh
export PAGEDSERVE_GIT_SHA=$(cat .carry/scripts/sha)
source benchmarks/device/runs/lib.sh
source benchmarks/device/runs/spec.sh

step fusion_tests 120 $PY -m pytest $T tests/kernels/test_rms_norm_quant.py \
  tests/kernels/test_rms_norm.py
PROF_ARGS="--model $MODEL --batch $(dry 32 4) --steps $(dry 20 2) $(dry "" "--device cpu")"
TAIL=30 step profile_spec 150 $PY benchmarks/profile_spec.py $PROF_ARGS
TAIL=8 step profile_plain 100 $PY benchmarks/profile_spec.py $PROF_ARGS --no-spec --rows 12
step gpu_tests 120 $PY -m pytest $T tests/gpu/test_gpu_spec_decode.py tests/gpu/test_gpu_rejection_sync.py \
  tests/gpu/test_gpu_async_sampling.py tests/kernels/test_mixed_graph_layout.py
spec_vs_vllm 150
finish
