#!/usr/bin/env bash
# Build the container image.
#
#   scripts/docker/build.sh [IMAGE=bert] [PUSH=none|push] [DOCKER_BUILD_OPTIONS...]
#
# IMAGE is the tag (a registry URL to push to, or a local name); PUSH=push pushes it after the build.
# FROM_IMAGE_NAME in the environment replaces the NGC base image named in the Dockerfile. Options after
# PUSH go to `docker build` after the script's own, so they can add build arguments or undo a default:
#   FROM_IMAGE_NAME=python:3.11-slim-bookworm scripts/docker/build.sh bert-cpu none \
#     --build-arg TORCH_SPEC=torch==2.13.0 --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
#   ... --pull=false --no-cache=false     (a base image made locally, and the layer cache reused)
# See docs/docker.md.
set -euo pipefail

image=${1:-bert}
push=${2:-none}
shift $(($# < 2 ? $# : 2))
case "$push" in
  none | push) ;;
  *) echo "build.sh: PUSH must be none or push, got '$push'" >&2; exit 2 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
build_args=()
if [[ -n "${FROM_IMAGE_NAME:-}" ]]; then
  build_args+=(--build-arg "FROM_IMAGE_NAME=$FROM_IMAGE_NAME")
fi
docker build --network=host --rm --pull --no-cache ${build_args[@]+"${build_args[@]}"} "$@" -t "$image" .
if [[ "$push" == push ]]; then
  docker push "$image"
fi
