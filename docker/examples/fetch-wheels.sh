#!/usr/bin/env bash
# Download the example app's wheels (docker/examples/requirements.txt, with
# dependencies, binary only) for CPython 3.11 / manylinux x86_64, i.e. for
# misim-pybase:bookworm, into $MISIM_DOCKER_WORK/wheels.
#
#   docker/examples/fetch-wheels.sh [--force]
#
# Runs pip on the host (the only step that needs PyPI). Idempotent: skipped
# when wheels/.stamp matches a hash of requirements.txt and this script.
#
# Environment:
#   MISIM_DOCKER_WORK  work directory (default target/docker of this checkout)
#   PYTHON             host interpreter with pip (default python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
requirements="$here/requirements.txt"
work="${MISIM_DOCKER_WORK:-$(cd "$here/../.." && pwd)/target/docker}"
wheels="$work/wheels"
stamp="$wheels/.stamp"
python="${PYTHON:-python3}"

log() { echo "fetch-wheels: $*" >&2; }

# Target: bookworm's python3 (CPython 3.11, glibc 2.36, x86_64).
target=(
  --only-binary=:all:
  --implementation cp --python-version 3.11
  --abi cp311 --abi abi3 --abi none
  --platform manylinux_2_36_x86_64 --platform manylinux_2_28_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64
  --platform any
)

want="$(cat "$requirements" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [[ "${1:-}" != "--force" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  log "wheels up to date in $wheels"
  exit 0
fi

mkdir -p "$work"
tmp="$(mktemp -d "$work/wheels.tmp.XXXXXX")"
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT

log "downloading wheels into $wheels"
"$python" -m pip download --disable-pip-version-check --no-input -q \
  "${target[@]}" -r "$requirements" -d "$tmp"

echo "$want" >"$tmp/.stamp"
rm -rf "$wheels"
mv "$tmp" "$wheels"
trap - EXIT
log "$(find "$wheels" -name '*.whl' | wc -l) wheels in $wheels"
