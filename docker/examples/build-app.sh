#!/usr/bin/env bash
# Build the example app image misim-example-app:local without any registry.
#
#   docker/examples/build-app.sh [--force]
#
# Steps (each idempotent):
#   1. docker/base/build-pybase.sh   -> misim-pybase:bookworm
#   2. docker/examples/fetch-wheels.sh -> $MISIM_DOCKER_WORK/wheels
#   3. assemble the build context in $MISIM_DOCKER_WORK/app-context
#      (Dockerfile, app.py, requirements.txt, wheels/) and docker build it.
# Step 3 is skipped when the image's misim.app.hash label matches a hash of
# the context and of the base image id.
#
# Environment:
#   MISIM_DOCKER_WORK  work directory (default target/docker of this checkout)
#   MISIM_APP_IMAGE    image name (default misim-example-app:local)
#   DOCKER_BUILDKIT    passed through to docker build (default 0: classic)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="${MISIM_DOCKER_WORK:-$(cd "$here/../.." && pwd)/target/docker}"
export MISIM_DOCKER_WORK="$work"
image="${MISIM_APP_IMAGE:-misim-example-app:local}"
base_image="${MISIM_PYBASE_IMAGE:-misim-pybase:bookworm}"
label=misim.app.hash

force=()
if [[ "${1:-}" == "--force" ]]; then
  force=(--force)
fi

log() { echo "build-app: $*" >&2; }

"$here/../base/build-pybase.sh"
"$here/fetch-wheels.sh" "${force[@]}"

context="$work/app-context"
rm -rf "$context"
mkdir -p "$context/wheels"
cp "$here/app/Dockerfile" "$here/app/app.py" "$here/requirements.txt" "$context/"
cp "$work"/wheels/*.whl "$context/wheels/"

base_id="$(docker image inspect --format '{{.Id}}' "$base_image")"
hash="$(
  {
    echo "$base_id"
    cat "${BASH_SOURCE[0]}"
    (cd "$context" && find . -type f | LC_ALL=C sort | xargs sha256sum)
  } | sha256sum | cut -d' ' -f1
)"

current="$(docker image inspect --format "{{ index .Config.Labels \"$label\" }}" "$image" 2>/dev/null || true)"
if [[ ${#force[@]} == 0 && "$current" == "$hash" ]]; then
  log "$image is up to date (hash ${hash:0:12})"
  exit 0
fi

previous="$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
start=$SECONDS
log "building $image from $context"
DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}" docker build \
  --network none \
  --label "$label=$hash" \
  -t "$image" \
  "$context" >"$work/app-build.log" 2>&1 || {
    log "docker build failed; last lines of $work/app-build.log:"
    tail -n 30 "$work/app-build.log" >&2
    exit 1
  }
# Drop the image this build replaced (now untagged), unless something
# still uses it.
if [[ -n "$previous" && "$previous" != "$(docker image inspect --format '{{.Id}}' "$image")" ]]; then
  docker image rm "$previous" >/dev/null 2>&1 || true
fi
size="$(docker image inspect --format '{{.Size}}' "$image")"
log "built $image in $((SECONDS - start))s ($((size / 1000000)) MB, hash ${hash:0:12})"
