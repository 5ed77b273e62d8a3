#!/usr/bin/env bash
# Build the local base image misim-pybase:bookworm without any image registry.
#
#   docker/base/build-pybase.sh [--force]
#
# The image is a Debian bookworm --variant=minbase root filesystem made with
# debootstrap from the Debian package mirror, plus python3, python3-pip and
# ca-certificates, imported with `docker import`. Nothing is pulled from a
# container registry.
#
# Idempotent: the image carries the label misim.pybase.hash (a sha256 of this
# script and of the settings below). When misim-pybase:bookworm already has
# the matching label, the script does nothing; a changed script rebuilds.
#
# Environment:
#   MISIM_DOCKER_WORK    work directory (default target/docker of this checkout);
#                        the rootfs is built in $MISIM_DOCKER_WORK/pybase
#   MISIM_DEBIAN_MIRROR  Debian mirror (default http://deb.debian.org/debian)
#   MISIM_PYBASE_IMAGE   image name (default misim-pybase:bookworm)
#
# Needs root (debootstrap) and a docker engine.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
self="$here/$(basename "${BASH_SOURCE[0]}")"

work="${MISIM_DOCKER_WORK:-$(cd "$here/../.." && pwd)/target/docker}"
mirror="${MISIM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
image="${MISIM_PYBASE_IMAGE:-misim-pybase:bookworm}"
suite=bookworm
arch="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
packages=python3,python3-pip,ca-certificates
label=misim.pybase.hash

force=0
if [[ "${1:-}" == "--force" ]]; then
  force=1
fi

log() { echo "build-pybase: $*" >&2; }

hash="$(
  {
    cat "$self"
    echo "$mirror $suite $arch $packages"
  } | sha256sum | cut -d' ' -f1
)"

current="$(docker image inspect --format "{{ index .Config.Labels \"$label\" }}" "$image" 2>/dev/null || true)"
if [[ "$force" == 0 && "$current" == "$hash" ]]; then
  log "$image is up to date (hash ${hash:0:12})"
  exit 0
fi

if [[ "$(id -u)" != 0 ]]; then
  log "debootstrap needs root; run as root (or with sudo)"
  exit 1
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

base="$work/pybase"
rootfs="$base/rootfs"
cache="$base/debs"
mkdir -p "$base" "$cache"

# Remove a previous (possibly half-finished) rootfs. A debootstrap run that
# died may have left /proc, /sys or devpts mounted inside it: unmount those
# first (deepest first), and never cross file systems while deleting.
cleanup_rootfs() {
  if [[ -d "$rootfs" ]]; then
    local real m
    real="$(realpath "$rootfs")"
    while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done < <(awk -v r="$real" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r)
    rm -rf --one-file-system "$rootfs"
  fi
}
cleanup_rootfs
trap cleanup_rootfs EXIT

start=$SECONDS
log "debootstrap $suite ($arch, minbase, +$packages) from $mirror"
debootstrap \
  --variant=minbase \
  --arch="$arch" \
  --include="$packages" \
  --cache-dir="$(realpath "$cache")" \
  "$suite" "$rootfs" "$mirror" >"$base/debootstrap.log" 2>&1 || {
    log "debootstrap failed; last lines of $base/debootstrap.log:"
    tail -n 30 "$base/debootstrap.log" >&2
    exit 1
  }

# Apt sources for whoever extends the image (the image itself never needs
# network access).
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
EOF

# Keep it small: no package caches/lists, docs, man pages, locales.
rm -rf \
  "$rootfs"/var/cache/apt/archives/*.deb \
  "$rootfs"/var/cache/apt/*.bin \
  "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* \
  "$rootfs"/usr/share/doc/* \
  "$rootfs"/usr/share/man/* \
  "$rootfs"/usr/share/info/* \
  "$rootfs"/var/cache/debconf/*-old
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} + 2>/dev/null || true
# Host-specific files: docker provides these at run time.
: >"$rootfs/etc/resolv.conf"
: >"$rootfs/etc/hostname"
rm -f "$rootfs/etc/machine-id" && : >"$rootfs/etc/machine-id"

log "importing $image"
# /dev, /proc and /sys are provided by the container runtime: ship them empty.
tar -C "$rootfs" --numeric-owner --xattrs \
    --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    -c . |
  docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL $label=$hash" \
    --change 'CMD ["python3"]' \
    --message "misim-pybase: debootstrap $suite minbase +$packages" \
    - "$image" >/dev/null

cleanup_rootfs
trap - EXIT

size="$(docker image inspect --format '{{.Size}}' "$image")"
log "built $image in $((SECONDS - start))s ($((size / 1000000)) MB, hash ${hash:0:12})"
