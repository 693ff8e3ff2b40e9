#!/bin/bash
# Device call 3: pagedserve serve vs vllm serve (Llama-3-8B shape, dummy weights), all at once
# (rate inf), 32 req/s and one at a time, 2 rounds.   carry: [".carry"]   timeout_s: 600
# expect ~6.5 min (start 190 s, bench ~200 s)
source benchmarks/device/prep.sh
export PAGEDSERVE_GIT_SHA=$(cat .carry/scripts/sha)
source benchmarks/device/runs/lib.sh
CASES=${CASES:-serving_rateinf,serving_rate32,serving_single}
source benchmarks/device/runs/serve.sh
