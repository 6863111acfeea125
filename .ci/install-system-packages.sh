#!/usr/bin/env bash
# Install the Debian packages of .ci/system-packages.txt that are missing, where this machine allows
# it (root with apt-get). Elsewhere say which are missing and carry on: their tests skip.
# Never fails: tests that need a package report it in the run's skip summary.
set -uo pipefail

list="$(dirname "${BASH_SOURCE[0]}")/system-packages.txt"
missing=()
while read -r package _; do
  [[ -z "$package" || "$package" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done <"$list"
((${#missing[@]})) || exit 0

if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system packages not installed (needs root and apt-get): ${missing[*]}; their tests will skip" >&2
  exit 0
fi
echo "installing system packages for the tests: ${missing[*]}" >&2
log=$(mktemp)
# apt's own chatter (debconf, needrestart) goes to the log; it is shown only when the install fails.
if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"; } >"$log" 2>&1; then
  tail -n 5 "$log" >&2
  echo "apt-get install ${missing[*]} failed; their tests will skip" >&2
fi
rm -f "$log"
exit 0
