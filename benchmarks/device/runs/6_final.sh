#!/bin/bash
# Device call 6: the fused RMSNorm+quant tests after the deterministic-norm change, the GPU
# spec-decode / async-sampling tests (engines freed between tests), then vLLM's n-gram and
# pagedserve's spec_decode.py (vectorised verifier) on the same replay cases.
#     carry: [".carry"]   timeout_s: 600   expect ~6-7 min
source benchmarks/device/prep.sh
export PAGEDSERVE_GIT_SHA=$(cat .carry/scripts/sha)
source benchmarks/device/runs/lib.sh
T=$(dry "-m gpu" "-m gpu --collect-only -q")
CASES=${CASES:-$(dry replay_ngram_bs1,ngram_bs32,ngram_bs256 replay_ngram_bs1,ngram_bs4)}
MODEL=$(dry /tmp/llama3 /tmp/llama3-tiny)

step fusion_tests 120 $PY -m pytest $T tests/kernels/test_rms_norm_quant.py \
  tests/kernels/test_rms_norm.py
step gpu_tests 120 $PY -m pytest $T tests/gpu/test_gpu_spec_decode.py \
  tests/gpu/test_gpu_async_sampling.py tests/kernels/test_triton_backend.py \
  tests/kernels/test_mixed_graph_layout.py
step vllm_spec 120 $(dry "$V python3" "$PY") benchmarks/vllm_spec_side.py --model-dir "$MODEL" \
  --cases "$CASES" --out "$LOGS/vllm_spec.json"
VJ=""; [ -s "$LOGS/vllm_spec.json" ] && VJ="--vllm-json $LOGS/vllm_spec.json"
step spec_decode 200 $PY benchmarks/spec_decode.py --model "$MODEL" --load-format dummy \
  --dummy-init uniform-small --random-seed-prompts --cases "$CASES" $VJ \
  $(dry "" "--device cpu --max-tokens 16 --no-record")
finish
