#!/usr/bin/env bash
# Make a Debian base image locally, for machines that cannot pull from a registry.
#
#   scripts/docker/debian_base.sh [SUITE=bookworm]        (as root; needs debootstrap and a docker daemon)
#
# Prints the image name on its last line, for FROM_IMAGE_NAME:
#   FROM_IMAGE_NAME=$(scripts/docker/debian_base.sh) TORCH_SPEC=torch==2.13.0 scripts/docker/build.sh
#
# The root file system comes from debootstrap (minbase, like the debian:SUITE-slim image) and Debian's
# package mirror (DEBIAN_MIRROR, default: the first one apt uses here, else deb.debian.org). It is cached
# as a tarball in BERT_DOCKER_CACHE (default ~/.cache/bert-pytorch/docker) under a name keyed by the
# recipe (debootstrap options, suite, mirror, clean-up version), so later runs only `docker import` it, or do nothing when the
# image is already there. Bookworm's python3 is 3.11, which the CPU torch wheels on PyPI-like indexes
# and wheelhouses built on a Python 3.11 host fit.
set -euo pipefail

suite=${1:-bookworm}
debootstrap_options=(--variant=minbase --include=ca-certificates)
# Bump when the steps after debootstrap change, so cached tarballs made by older steps are not reused.
recipe_version=1

fail() { echo "error: $*" >&2; exit 2; }
[[ "$(id -u)" == 0 ]] || fail "debian_base.sh must run as root (debootstrap makes device nodes and chroots)"
command -v debootstrap >/dev/null || fail "debootstrap is not installed (apt-get install debootstrap)"
command -v docker >/dev/null || fail "docker is not installed (apt-get install docker.io)"

apt_mirror() {
  # The mirror apt already uses reaches Debian from here even where deb.debian.org is blocked.
  local uri
  uri=$(grep -h -o -E '(URIs:|^deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/* \
        2>/dev/null | grep -o -E 'https?://[^ ]+' | head -n 1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}
mirror=${DEBIAN_MIRROR:-$(apt_mirror)}
cache=${BERT_DOCKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bert-pytorch/docker}
key=$(echo "${debootstrap_options[*]} $suite $mirror $recipe_version" | sha256sum | cut -c1-12)
image="bert-debian-base:$suite-$key"
tarball="$cache/debian-$suite-$key.tar.gz"

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image"
  exit 0
fi

if [[ ! -s "$tarball" ]]; then
  mkdir -p "$cache"
  work=$(mktemp -d "$cache/.debootstrap.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  echo "debian_base.sh: debootstrap $suite from $mirror (a few minutes)" >&2
  debootstrap "${debootstrap_options[@]}" "$suite" "$work/root" "$mirror" >&2 \
    || fail "debootstrap $suite $mirror failed (log: $work/root/debootstrap/debootstrap.log)"
  # As in Debian's official images: no package lists or downloaded .debs in the image.
  rm -rf "$work/root/var/lib/apt/lists/"* "$work/root/var/cache/apt/"*.bin "$work/root/var/cache/apt/archives/"*.deb
  tar --numeric-owner --xattrs -C "$work/root" -czf "$work/root.tar.gz" .
  mv "$work/root.tar.gz" "$tarball"  # whole or absent: a killed run leaves no half tarball
fi

docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["bash"]' \
  "$tarball" "$image" >/dev/null
echo "$image"
