#!/usr/bin/env bash
# Wait until a Triton server is live and ready over HTTP (/v2/health/live, /v2/health/ready).
#
#   bash triton/scripts/wait_for_triton_server.sh [HOST[:PORT]=localhost] [TIMEOUT_S=300]
#
# A HOST without a port is the original's form: the HTTP port is then $TRITON_HTTP_PORT or 8000.
# Exits 0 when ready, 1 after TIMEOUT_S seconds.
set -euo pipefail

target=${1:-localhost}
timeout_s=${2:-300}
if [[ ! "$timeout_s" =~ ^[0-9]+$ ]]; then
  echo "error: wait_for_triton_server.sh: TIMEOUT_S must be a whole number of seconds, got '$timeout_s'" >&2
  exit 2
fi
if [[ "$target" != *:* ]]; then
  target="$target:${TRITON_HTTP_PORT:-8000}"
fi

healthy() {
  curl -sf -m 5 -o /dev/null "http://$target/v2/health/live" &&
    curl -sf -m 5 -o /dev/null "http://$target/v2/health/ready"
}

deadline=$((SECONDS + timeout_s))
until healthy; do
  if ((SECONDS >= deadline)); then
    echo "Triton server at $target not ready after ${timeout_s} s" >&2
    exit 1
  fi
  sleep 1
done
echo "Triton server at $target is ready"
