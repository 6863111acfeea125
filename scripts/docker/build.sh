#!/usr/bin/env bash
# Build the container image.
#
#   scripts/docker/build.sh [IMAGE=bert] [PUSH=none|push]
#
# IMAGE is the tag (a registry URL to push to, or a local name); PUSH=push pushes it after the build.
# FROM_IMAGE_NAME in the environment replaces the NGC base image named in the Dockerfile.
set -euo pipefail

image=${1:-bert}
push=${2:-none}
case "$push" in
  none | push) ;;
  *) echo "build.sh: PUSH must be none or push, got '$push'" >&2; exit 2 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
build_args=()
if [[ -n "${FROM_IMAGE_NAME:-}" ]]; then
  build_args+=(--build-arg "FROM_IMAGE_NAME=$FROM_IMAGE_NAME")
fi
docker build --network=host --rm --pull --no-cache ${build_args[@]+"${build_args[@]}"} -t "$image" .
if [[ "$push" == push ]]; then
  docker push "$image"
fi
