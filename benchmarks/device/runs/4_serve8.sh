#!/bin/bash
# Device call 4: pagedserve serve vs vllm serve at 8 req/s (latency at a light load), 2 rounds,
# with its own start.   carry: [".carry"]   timeout_s: 600
# expect ~8 min (start 190 s, bench ~270 s)
source benchmarks/device/prep.sh
export PAGEDSERVE_GIT_SHA=$(cat .carry/scripts/sha)
source benchmarks/device/runs/lib.sh
CASES=${CASES:-serving_rate8}
source benchmarks/device/runs/serve.sh
