#!/bin/sh
# Build the CPU image, run it, check /health and one completion, report the image size.
#   docker/smoke.sh                      # docker if its daemon answers, else podman
#   BUILDER=podman docker/smoke.sh
# Extra build flags (e.g. a base image reachable offline, a wheel folder) go in SMOKE_BUILD_ARGS;
# extra run flags in SMOKE_RUN_ARGS.
set -eu
cd "$(dirname "$0")/.."
if [ -z "${BUILDER:-}" ]; then
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then BUILDER=docker
    elif command -v podman >/dev/null 2>&1; then BUILDER=podman
    else echo "smoke: neither a docker daemon nor podman is available" >&2; exit 2; fi
fi
IMAGE=${IMAGE:-pagedserve:cpu-smoke}
PORT=${SMOKE_PORT:-18080}
NAME=pagedserve-smoke-$$
echo "smoke: building $IMAGE with $BUILDER"
FORMAT=""
case "$BUILDER" in podman*|buildah*) FORMAT="--format docker" ;; esac  # OCI drops HEALTHCHECK
# shellcheck disable=SC2086
$BUILDER build -t "$IMAGE" $FORMAT --build-arg DEVICE=cpu ${SMOKE_BUILD_ARGS:-} .
SIZE=$($BUILDER image inspect "$IMAGE" --format '{{.Size}}')
echo "smoke: image size $(( SIZE / 1000000 )) MB"
# shellcheck disable=SC2086
$BUILDER run -d --name "$NAME" -p "$PORT:8000" ${SMOKE_RUN_ARGS:-} "$IMAGE"
trap '$BUILDER logs "$NAME" 2>&1 | tail -20; $BUILDER rm -f "$NAME" >/dev/null 2>&1 || true' EXIT
i=0
until curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 300 ]; then echo "smoke: /health not ready after 300 s" >&2; exit 1; fi
    sleep 1
done
echo "smoke: /health ok after ${i} s"
OUT=$(curl -fsS "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
    -d '{"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}')
echo "smoke: completion $OUT"
echo "$OUT" | grep -q '"text"' || { echo "smoke: no completion text" >&2; exit 1; }
echo "smoke: OK ($(date -u +%Y-%m-%dT%H:%MZ), $BUILDER, $(( SIZE / 1000000 )) MB)"
