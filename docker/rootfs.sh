#!/usr/bin/env bash
# Gathers the misim binary and exactly the shared libraries it links into OUT, for an image
# FROM scratch: OUT/root (owned by root) and OUT/owned (owned by the runtime user: /data, /pki).
# Usage: docker/rootfs.sh BINARY OUT
set -euo pipefail
bin=$1
out=$2
rm -rf "$out"
mkdir -p "$out/root/usr/local/bin" "$out/root/tmp" "$out/owned/data" "$out/owned/pki" "$out/owned/ca"
# A stripped copy: debug info is most of a debug build's size.
objcopy --strip-debug "$bin" "$out/root/usr/local/bin/misim" 2>/dev/null || cp "$bin" "$out/root/usr/local/bin/misim"
chmod 0755 "$out/root/usr/local/bin/misim"
# Every library ldd names, plus the dynamic loader (the line without "=>").
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$out/root$(dirname "$lib")"
    cp -L "$lib" "$out/root$lib"
done
chmod 1777 "$out/root/tmp"
# SQLite and glibc need nothing else; name resolution uses glibc's built-in files/dns modules
# with the /etc/hosts and /etc/resolv.conf docker mounts.
printf 'misim:x:65532:65532:misim:/data:/sbin/nologin\n' > "$out/root/passwd"
mkdir -p "$out/root/etc"
mv "$out/root/passwd" "$out/root/etc/passwd"
printf 'misim:x:65532:\n' > "$out/root/etc/group"
