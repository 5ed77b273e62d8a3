#!/usr/bin/env bash
# Builds the runtime image (default tag misim:local) from a misim binary built on this machine:
# the `runtime` stage of docker/Dockerfile on top of that binary, so nothing is pulled from a
# registry.
# Usage: docker/build-image.sh [BINARY]   (default: target/release/misim)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/release/misim}
work=${MISIM_DOCKER_WORK:-$root/target/docker}/image
tag=${MISIM_IMAGE:-misim:local}
[ -x "$bin" ] || { echo "build-image: no binary at $bin (cargo build --release --bin misim)" >&2; exit 1; }
mkdir -p "$work/context"
"$root/docker/rootfs.sh" "$bin" "$work/context/out"
printf 'FROM scratch\nCOPY out/ /out/\n' > "$work/context/Dockerfile.bin"
DOCKER_BUILDKIT=0 docker build -q -f "$work/context/Dockerfile.bin" -t misim-bin:local "$work/context" >/dev/null
# The classic builder (all this engine offers without buildx) would run every stage before the
# target, the builder's registry pull included: so the runtime stage is taken verbatim from
# docker/Dockerfile, after a `bin` stage that is the local binary.
mkdir -p "$work/empty"
{
    echo "FROM misim-bin:local AS bin"
    sed -n '/^FROM scratch AS runtime/,$p' "$root/docker/Dockerfile"
} > "$work/Dockerfile.runtime"
grep -q '^FROM scratch AS runtime' "$work/Dockerfile.runtime" \
    || { echo "build-image: docker/Dockerfile has no 'FROM scratch AS runtime' stage" >&2; exit 1; }
DOCKER_BUILDKIT=0 docker build -q -f "$work/Dockerfile.runtime" -t "$tag" "$work/empty" >/dev/null
echo "built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}'))"
