#!/usr/bin/env bash
# Wait until a Triton server reports ready over HTTP (/v2/health/ready).
#
#   bash triton/scripts/wait_for_triton_server.sh [HOST:PORT=localhost:8000] [TIMEOUT_S=300]
#
# Exits 0 when ready, 1 after TIMEOUT_S seconds.
set -euo pipefail

url=${1:-localhost:8000}
timeout_s=${2:-300}
deadline=$((SECONDS + timeout_s))
until curl -sf -o /dev/null "http://$url/v2/health/ready"; do
  if ((SECONDS >= deadline)); then
    echo "Triton server at $url not ready after ${timeout_s} s" >&2
    exit 1
  fi
  sleep 1
done
echo "Triton server at $url is ready"
