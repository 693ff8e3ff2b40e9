#!/bin/bash
# Device call 1: the GPU tests of the fixes made blind, then the fp8/int8 throughput and the
# structured-output decode measurements.   carry: [".carry"]   timeout_s: 600   expect ~5-7 min
#     bash benchmarks/device/runs/1_tests_and_quick.sh          (DRY=1 on a CPU: flags only)
source benchmarks/device/prep.sh
export PAGEDSERVE_GIT_SHA=$(cat .carry/scripts/sha)
source benchmarks/device/runs/lib.sh

step fusion_tests 180 $PY -m pytest $T tests/kernels/test_rms_norm_quant.py \
  tests/kernels/test_silu_mul_quant.py tests/engine/quantization/test_input_quant_fusion.py
# (-k applies to every file named: the async-sampling tests get their own step)
step mixed_graphs 120 $PY -m pytest $T tests/gpu/test_gpu_engine.py -k mixed_step_graphs
step async_sampling 90 $PY -m pytest $T tests/gpu/test_gpu_async_sampling.py
step quantization 150 $PY benchmarks/quantization.py \
  --cases fp8_w8a8_kv_fp8_sharegpt_like,int8_sharegpt_like --workload-dir .carry/workloads \
  $(dry "--model-shape llama3-8b --num-prompts 500" \
         "--model-shape llama-tiny --num-prompts 4 --device cpu") \
  --out "$LOGS/quantization.json"
step structured 100 $PY benchmarks/structured_output.py --decode --model /tmp/smollm2 \
  --load-format dummy $(dry "" "--batch 2 --max-tokens 8")
finish
