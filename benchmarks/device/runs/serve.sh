# Sourced by 3_serve.sh and 4_serve8.sh: both servers up (serve_vs_vllm.py start), the CASES
# alternated between them over ROUNDS rounds, the servers stopped whatever happened.
# The runs come back as $OUT/vs_vllm_runs.json (written after each run: a cut-off call keeps
# what finished); on the CPU machine, `python benchmarks/serve_vs_vllm.py record FILE` records
# them.
MODEL=$(dry /tmp/llama3 /tmp/llama3-tiny)
stop_servers() {
  python3 benchmarks/serve_vs_vllm.py stop --wait 3 >/dev/null 2>&1
  cp /tmp/pagedserve_server.log /tmp/vllm_server.log "$LOGS/" 2>/dev/null
}
trap stop_servers EXIT
python3 benchmarks/serve_vs_vllm.py stop --wait 1 >/dev/null 2>&1   # servers an earlier call left
step start 300 $PY benchmarks/serve_vs_vllm.py start --model-dir "$MODEL" \
  $(dry "" "--servers pagedserve") --vllm-cmd "$V python3 -m vllm.entrypoints.cli.main"
step bench 600 $PY benchmarks/serve_vs_vllm.py bench --cases "$CASES" \
  --workload-dir .carry/workloads --results "$LOGS/vs_vllm_runs.json" \
  $(dry "--rounds ${ROUNDS:-2}" "--rounds 1 --order pagedserve --max-requests 4")
stop_servers
finish
