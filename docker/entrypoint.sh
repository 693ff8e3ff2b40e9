#!/bin/sh
# `docker run IMAGE [MODEL] [FLAGS...]` -> `pagedserve serve [MODEL] [FLAGS...]` on 0.0.0.0:$PORT.
# HOST / PORT / PAGEDSERVE_ARGS (extra flags) may be set with `docker run -e`.
set -e
# shellcheck disable=SC2086  # PAGEDSERVE_ARGS is split into flags on purpose
exec pagedserve serve --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" ${PAGEDSERVE_ARGS:-} "$@"
