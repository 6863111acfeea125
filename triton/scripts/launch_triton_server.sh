#!/usr/bin/env bash
# Serve a model repository with the Triton Inference Server container on a GPU machine.
#
#   bash triton/scripts/launch_triton_server.sh [MODEL_REPOSITORY=results/triton_models] [GPUS=all] [IMAGE]
#
# IMAGE defaults to $TRITON_IMAGE or nvcr.io/nvidia/tritonserver:24.10-py3 (Triton 2.51, the version
# nvidia-pytriton bundles). Ports 8000 (HTTP), 8001 (gRPC) and 8002 (metrics) are published on
# 127.0.0.1 only. The repository checkout is mounted at /workspace/bert, read-only, so python-backend
# text models built with --code-root /workspace/bert find the project's code. The container runs in
# the foreground; Ctrl-C or `docker stop bert_triton_server` stops it. Without a container (a laptop,
# CPU only) run `python triton/server.py --model-repository DIR` instead.
set -euo pipefail

CODEDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
model_repository=$(cd "${1:-"$CODEDIR/results/triton_models"}" && pwd)
gpus=${2:-all}
image=${3:-${TRITON_IMAGE:-nvcr.io/nvidia/tritonserver:24.10-py3}}

gpu_args=()
if [[ "$gpus" != none ]]; then
  gpu_args=(--gpus "$gpus")
fi

exec docker run --rm --name bert_triton_server "${gpu_args[@]}" --shm-size=1g --ulimit memlock=-1 \
  -p 127.0.0.1:8000:8000 -p 127.0.0.1:8001:8001 -p 127.0.0.1:8002:8002 \
  -v "$model_repository":/models:ro -v "$CODEDIR":/workspace/bert:ro \
  "$image" tritonserver --model-repository=/models --strict-readiness=true
