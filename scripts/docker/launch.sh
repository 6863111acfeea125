#!/usr/bin/env bash
# Start a container of the image with this repository at /workspace/bert and ./results at /results.
#
#   scripts/docker/launch.sh [CMD=/bin/bash] [GPUS=all] [EXTRA_MOUNTS] [IMAGE=bert] [BRIDGE=host]
#   scripts/docker/launch.sh CMD GPUS BRIDGE          (the classic three-argument form)
#
# CMD is split on spaces into the command and its arguments. GPUS is "all", "none" (CPU only) or a
# comma-separated list of GPU indices. EXTRA_MOUNTS holds more docker options, typically data:
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
gpu_option=()
case "$gpus" in
  none) ;;
  all) gpu_option=(--gpus all) ;;
  # The quotes keep docker from splitting the device list at its commas.
  *) gpu_option=(--gpus "\"device=$gpus\"") ;;
esac

exec docker run "${interactive[@]}" --rm ${gpu_option[@]+"${gpu_option[@]}"} \
  --net="$bridge" --ipc=host --ulimit memlock=-1 --ulimit stack=67108864 \
  -v "$repo:/workspace/bert" -v "$repo/results:/results" \
  ${extra[@]+"${extra[@]}"} "$image" "${command[@]}"
