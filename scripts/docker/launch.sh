#!/usr/bin/env bash
# Start a container of the image with this repository at /workspace/bert and ./results at /results.
#
#   scripts/docker/launch.sh [CMD=/bin/bash] [GPUS=all] [EXTRA_MOUNTS] [IMAGE=bert] [BRIDGE=host]
#   scripts/docker/launch.sh CMD GPUS BRIDGE          (the classic three-argument form)
#
# CMD is split on spaces into the command and its arguments. GPUS is "all", "none" (CPU only) or a
# comma-separated list of GPU indices; with GPUs the locked-memory limit is lifted as well.
# EXTRA_MOUNTS holds more docker options, typically data:
# "-v /raid/bert/hdf5:/workspace/data -v /raid/bert/phase2:/workspace/data_phase2". BRIDGE is the
# docker network (host, bridge, ...). A third argument not starting with "-" is taken as BRIDGE,
# which keeps the classic `launch.sh CMD GPUS BRIDGE` calls working.
set -euo pipefail

cmd=${1:-/bin/bash}
gpus=${2:-all}
extra_mounts=${3:-}
image=${4:-bert}
bridge=${5:-host}
if (($# == 3)) && [[ -n "$extra_mounts" && "$extra_mounts" != -* ]]; then
  bridge=$extra_mounts
  extra_mounts=
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Created here so docker does not create it owned by root.
mkdir -p "$repo/results"

read -ra command <<<"$cmd"
read -ra extra <<<"$extra_mounts"
interactive=(-i)
if [[ -t 0 && -t 1 ]]; then
  interactive=(-it)
fi
# Unlimited locked memory is for CUDA's pinned host buffers and NCCL over InfiniBand, so only GPU runs
# ask for it: raising the limit needs CAP_SYS_RESOURCE, which some hosts (sandboxes, rootless docker)
# do not give, and there even `launch.sh CMD none` would fail with "error setting rlimits".
gpu_options=()
case "$gpus" in
  none) ;;
  all) gpu_options=(--gpus all --ulimit memlock=-1) ;;
  # The quotes keep docker from splitting the device list at its commas.
  *) gpu_options=(--gpus "\"device=$gpus\"" --ulimit memlock=-1) ;;
esac

exec docker run "${interactive[@]}" --rm ${gpu_options[@]+"${gpu_options[@]}"} \
  --net="$bridge" --ipc=host --ulimit stack=67108864 \
  -v "$repo:/workspace/bert" -v "$repo/results:/results" \
  ${extra[@]+"${extra[@]}"} "$image" "${command[@]}"
