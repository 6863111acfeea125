#!/usr/bin/env bash
# Serve a model repository: the Triton container where Docker runs, else triton/server.py (the
# tritonserver bundled with nvidia-pytriton, python backend only).
#
#   bash triton/scripts/launch_triton_server.sh [MODEL_REPOSITORY] [GPUS=all] [IMAGE] [--detach]
#   bash triton/scripts/launch_triton_server.sh BRIDGE [--NV_VISIBLE_DEVICES=LIST]     (the original's form)
#
# A first argument that is an existing folder is the repository; anything else is the original's
# docker network (BRIDGE: host, bridge, tritonnet, ...), which also selects the original's behaviour:
# the server starts detached and its id is printed (container id, or PID without a container), for
# `SERVER_ID=$(bash triton/scripts/launch_triton_server.sh tritonnet)`. --detach does the same in
# the first form. Stop it with `docker stop bert_triton_server` or `kill PID`.
#
# Container: IMAGE defaults to $TRITON_IMAGE or nvcr.io/nvidia/tritonserver:24.10-py3 (Triton 2.51,
# the version nvidia-pytriton bundles); the checkout is mounted read-only at /workspace/bert, so text
# models built with --code-root /workspace/bert find the project's code; GPUS "none" runs without GPUs.
# Environment: MODEL_REPOSITORY (default results/triton_models); TRITON_LAUNCHER=docker|python
# (default: docker when `docker info` works, else python); TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT (8000, 8001, 8002), published or bound on
# 127.0.0.1 only; TRITON_SERVER_LOG (detached python server's log, default results/triton_server.log);
# PYTHON.
set -euo pipefail

CODEDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
# shellcheck source=triton/scripts/common.sh
source "$CODEDIR/triton/scripts/common.sh"
CONTAINER_NAME=bert_triton_server


model_repository=${MODEL_REPOSITORY:-"$CODEDIR/results/triton_models"}
network=""
gpus=all
image=${TRITON_IMAGE:-nvcr.io/nvidia/tritonserver:24.10-py3}
detach=0
positional=()
while (($#)); do
  case "$1" in
    --NV_VISIBLE_DEVICES=*) gpus=${1#*=} ;;
    --detach | -d) detach=1 ;;
    -h | --help) print_usage "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) die "unknown option '$1'" ;;
    *) positional+=("$1") ;;
  esac
  shift
done
if ((${#positional[@]})); then
  if [[ -d "${positional[0]}" ]]; then
    model_repository=${positional[0]}
    gpus=${positional[1]:-$gpus}
    image=${positional[2]:-$image}
  else
    network=${positional[0]}
    detach=1
    ((${#positional[@]} == 1)) || die "the original's form takes BRIDGE and --NV_VISIBLE_DEVICES=LIST only"
  fi
fi
[[ -d "$model_repository" ]] || die "model repository $model_repository not found (triton/scripts/export_model.sh writes it)"
model_repository=$(cd "$model_repository" && pwd)
http_port=${TRITON_HTTP_PORT:-8000}
grpc_port=${TRITON_GRPC_PORT:-8001}
metrics_port=${TRITON_METRICS_PORT:-8002}

launcher=${TRITON_LAUNCHER:-}
if [[ -z "$launcher" ]]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then launcher=docker; else launcher=python; fi
fi

case "$launcher" in
  docker)
    run_args=(--rm --name "$CONTAINER_NAME" --shm-size=1g --ulimit memlock=-1
      -p "127.0.0.1:$http_port:8000" -p "127.0.0.1:$grpc_port:8001" -p "127.0.0.1:$metrics_port:8002"
      -v "$model_repository":/models:ro -v "$CODEDIR":/workspace/bert:ro)
    if [[ "$gpus" != none ]]; then
      if [[ "$gpus" == all ]]; then run_args+=(--gpus all); else run_args+=(--gpus "\"device=$gpus\""); fi
    fi
    if [[ -n "$network" && "$network" != host ]]; then run_args+=("--network=$network"); fi
    if ((detach)); then run_args+=(-d); fi
    exec docker run "${run_args[@]}" "$image" tritonserver --model-repository=/models --strict-readiness=true
    ;;
  python)
    server=("$PYTHON" "$CODEDIR/triton/server.py" --model-repository "$model_repository"
      --http-port "$http_port" --grpc-port "$grpc_port" --metrics-port "$metrics_port")
    if ((!detach)); then exec "${server[@]}"; fi
    log=${TRITON_SERVER_LOG:-"$CODEDIR/results/triton_server.log"}
    mkdir -p "$(dirname "$log")"
    # setsid: the server outlives this script and its terminal, like a detached container.
    setsid "${server[@]}" >"$log" 2>&1 </dev/null &
    echo $!
    ;;
  *) die "TRITON_LAUNCHER must be docker or python, not '$launcher'" ;;
esac
