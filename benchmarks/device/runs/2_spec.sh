#!/bin/bash
# Device call 2: speculative decoding. vLLM's n-gram on its own replay prompts first (the target),
# then pagedserve's spec_decode.py with vLLM-like dummy weights (uniform-small, so the replay
# repeats), compared through --vllm-json; then the new GPU spec-decode tests if they exist.
#     carry: [".carry"]   timeout_s: 600   expect ~5-6 min
source benchmarks/device/prep.sh
export PAGEDSERVE_GIT_SHA=$(cat .carry/scripts/sha)
source benchmarks/device/runs/lib.sh
CASES=${CASES:-$(dry replay_ngram_bs1,ngram_bs32,ngram_bs256 replay_ngram_bs1,ngram_bs4)}
MODEL=$(dry /tmp/llama3 /tmp/llama3-tiny)

# DRY: no vLLM here, the step stops at `import vllm` (rc 1) once its flags have parsed
step vllm_spec 200 $(dry "$V python3" "$PY") benchmarks/vllm_spec_side.py --model-dir "$MODEL" \
  --cases "$CASES" --out "$LOGS/vllm_spec.json"
VJ=""; [ -s "$LOGS/vllm_spec.json" ] && VJ="--vllm-json $LOGS/vllm_spec.json"
step spec_decode 200 $PY benchmarks/spec_decode.py --model "$MODEL" --load-format dummy \
  --dummy-init uniform-small --random-seed-prompts --cases "$CASES" $VJ \
  $(dry "" "--device cpu --max-tokens 16 --no-record")
if [ -f tests/gpu/test_gpu_spec_decode.py ]; then
  step spec_tests 150 $PY -m pytest $(dry "-m gpu" "-m gpu --collect-only -q") \
    tests/gpu/test_gpu_spec_decode.py
fi
finish
