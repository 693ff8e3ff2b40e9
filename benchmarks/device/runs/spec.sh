# Sourced by 2_spec.sh, 5_verify.sh, 7_spec_profile.sh and 8_spec_diag.sh: vLLM's n-gram on its own replay prompts
# (`vllm_spec_side.py`), then pagedserve's spec_decode.py with vLLM-like dummy weights
# (uniform-small, so the replay repeats) on the same CASES, compared through --vllm-json.
CASES=${CASES:-$(dry replay_ngram_bs1,ngram_bs32,ngram_bs256 replay_ngram_bs1,ngram_bs4)}
MODEL=$(dry /tmp/llama3 /tmp/llama3-tiny)
spec_vs_vllm() {
  # DRY: no vLLM here, the step stops at `import vllm` (rc 1) once its flags have parsed
  step vllm_spec "$1" $(dry "$V python3" "$PY") benchmarks/vllm_spec_side.py --model-dir "$MODEL" \
    --cases "$CASES" --out "$LOGS/vllm_spec.json"
  spec_pagedserve 200 "$LOGS/vllm_spec.json"
}
# spec_pagedserve LIMIT VLLM_JSON: pagedserve's side, compared with VLLM_JSON when it holds figures
spec_pagedserve() {
  local vj=""; [ -s "$2" ] && vj="--vllm-json $2"
  step spec_decode "$1" $PY benchmarks/spec_decode.py --model "$MODEL" --load-format dummy \
    --dummy-init uniform-small --random-seed-prompts --cases "$CASES" $vj \
    $(dry "" "--device cpu --max-tokens 16 --no-record")
}
