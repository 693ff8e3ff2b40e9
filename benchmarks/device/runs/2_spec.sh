#!/bin/bash
# Device call 2: speculative decoding. vLLM's n-gram on its own replay prompts first (the target),
# then pagedserve's spec_decode.py with vLLM-like dummy weights (uniform-small, so the replay
# repeats), compared through --vllm-json; then the new GPU spec-decode tests if they exist.
#     carry: [".carry"]   timeout_s: 600   expect ~5-6 min
source benchmarks/device/prep.sh
export PAGEDSERVE_GIT_SHA=$(cat .carry/scripts/sha)
source benchmarks/device/runs/lib.sh
source benchmarks/device/runs/spec.sh

spec_vs_vllm 200
if [ -f tests/gpu/test_gpu_spec_decode.py ]; then
  step spec_tests 150 $PY -m pytest $(dry "-m gpu" "-m gpu --collect-only -q") \
    tests/gpu/test_gpu_spec_decode.py
fi
finish
