# Sourced by the runs/ scripts after prep.sh: a deadline for the whole call, steps that never stop
# the script, and at the end the logs tarred into $OUT (one file; the benchmarks' own *.jsonl land
# in $OUT beside it: at most 8 files come back).
#   DRY=1   on a CPU machine, to check paths and flags: tiny settings, pytest only collects, vLLM
#           steps stop at `import vllm`, serve starts pagedserve alone (runs/README.md)
#   BUDGET  seconds the call may take in all (default 570: the device tool stops a command at 600)
set -uo pipefail   # no -e: a failed step is reported and the next one still runs
NAME=$(basename "$0" .sh)
DRY=${DRY:-0}
DEADLINE=$(( ${BUDGET:-570} - 25 ))   # steps end by then: 25 s stay for stopping servers and tar
SLOW=1; [ "$DRY" = 1 ] && SLOW=3 DEADLINE=3600   # a shared CPU runs even the tiny steps slowly
LOGS=/tmp/logs/$NAME; rm -rf "$LOGS"; mkdir -p "$LOGS"
SUMMARY=""
note() { SUMMARY+="$(printf '%-16s %s' "$1" "$2")"$'\n'; }   # a line of the closing table
if [ "$DRY" = 1 ]; then
  PY=${PYTHON:-python3}
  OUT=${OUT:-/tmp/dry_out/$NAME}; rm -rf "$OUT"
  # benchmarks append to benchmarks/results too: put the folder back as it was at the end
  DRY_RESULTS=$(mktemp -d); cp -a benchmarks/results/. "$DRY_RESULTS/"
  # a 2-layer Llama with Llama-3's vocabulary and tokenizer stands in for /tmp/llama3
  rm -rf /tmp/llama3-tiny; cp -r /tmp/llama3 /tmp/llama3-tiny
  $PY -c 'import json; c = json.load(open("configs/models/llama-tiny.json"))
c.update(vocab_size=128256, bos_token_id=128000, eos_token_id=128001)
json.dump(c, open("/tmp/llama3-tiny/config.json", "w"))'
else
  PY="$V python3"   # pagedserve too: the bundle brings xgrammar, fastapi, pyzmq... the image lacks
fi
export OUT=${OUT:-/tmp/out/$NAME}; mkdir -p "$OUT"   # the device tool sets OUT
echo "$NAME: sha $PAGEDSERVE_GIT_SHA, DRY=$DRY, logs in $LOGS"

# step NAME LIMIT_S CMD...: CMD under timeout (cut to the deadline), output in $LOGS/NAME.log
step() {
  local name=$1 limit=$(( $2 * SLOW )) left=$(( DEADLINE - SECONDS )) t0=$SECONDS rc; shift 2
  if (( left < 15 )); then
    echo "== $name: SKIPPED, no time left"; note "$name" skipped; return
  fi
  (( limit > left )) && limit=$left
  echo "== $name (at ${SECONDS} s, limit ${limit} s): $*"
  timeout -k 10 "$limit" "$@" > "$LOGS/$name.log" 2>&1; rc=$?
  (( rc == 124 || rc == 137 )) && echo "   TIMED OUT after ${limit} s"
  tail -n "${TAIL:-12}" "$LOGS/$name.log" | cut -c1-400 | sed 's/^/   /'
  note "$name" "$(printf 'rc %-3s %4s s' "$rc" $(( SECONDS - t0 )))"
}

# dry NORMAL TINY: the argument string for this mode
dry() { if [ "$DRY" = 1 ]; then echo "$2"; else echo "$1"; fi; }
T=$(dry "-m gpu" "-m gpu --collect-only -q")   # pytest flags of the GPU-test steps

finish() {
  tar -czf "$OUT/$NAME-logs.tgz" -C /tmp/logs "$NAME"
  if [ "$DRY" = 1 ]; then
    find benchmarks/results -mindepth 1 -delete && cp -a "$DRY_RESULTS"/. benchmarks/results/
    rm -rf "$DRY_RESULTS"
  fi
  echo "== $NAME done at ${SECONDS} s; \$OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
  printf '%s' "$SUMMARY"
}
