#!/bin/bash
# Device call 8 (sixth session): call 7's profile and spec_decode.py timed out without a line of
# output (100 s and 161 s). The profile again with phase times, engine logs and a stack dump
# every 60 s, then spec_decode.py with more time, against vLLM's figures from call 7 (the same
# session, an earlier lease: data/vllm_spec_2026-12-04_s6.json).
#     carry: [".carry"]   timeout_s: 600   expect ~8-9 min
source benchmarks/device/prep.sh
export PAGEDSERVE_GIT_SHA=$(cat .carry/scripts/sha)
source benchmarks/device/runs/lib.sh
source benchmarks/device/runs/spec.sh

PROF_ARGS="--model $MODEL --batch $(dry 32 4) --steps $(dry 20 2) $(dry "" "--device cpu")"
TAIL=30 step profile_spec 230 $PY benchmarks/profile_spec.py $PROF_ARGS --stack-every 60
spec_pagedserve 300 benchmarks/device/runs/data/vllm_spec_2026-12-04_s6.json
finish
