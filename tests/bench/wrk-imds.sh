#!/usr/bin/env bash
# IMDS measured from outside the simulator's process with wrk (Debian's `wrk` package): the
# cached token against /metadata/versions, the cached token's latency under 32 connections, and
# the uncached token against the machine's RSA-2048 signing rate (misim-bench's reference loop).
# A second opinion on misim-bench's IMDS figures with a lighter load generator; see
# docs/performance.md. Usage: tests/bench/wrk-imds.sh [path/to/misim] [seconds]
set -euo pipefail
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$0")/../.."
# Everything below (misim, wrk, the reference loop) runs in a network namespace holding only
# loopback: nothing here has a reason to leave the machine.
if [[ -z "${WRK_IMDS_ISOLATED:-}" ]]; then
    exec unshare -n -- env WRK_IMDS_ISOLATED=1 bash -c 'ip link set lo up && exec "$@"' _ "$self" "$@"
fi
misim=${1:-./target/release/misim}
seconds=${2:-5}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }
[ -x "$misim" ] || { echo "no misim binary at $misim (cargo build --release)" >&2; exit 2; }
[ -x ./target/release/misim-bench ] || { echo "no ./target/release/misim-bench" >&2; exit 2; }

dir=$(mktemp -d)
# Loopback only, every port chosen by the kernel, IMDS's rate limits lifted.
"$misim" up --data-dir "$dir" --host 127.0.0.1 --arm-port 0 --aad-port 0 --imds-port 0 \
    --imds-throttle off >"$dir/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do [ -s "$dir/connection.json" ] && break; sleep 0.1; done
imds=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['imds'])" "$dir/connection.json")
token="$imds/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F"

# CPU-seconds the simulator's process used (utime + stime, in clock ticks).
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
# CPU nanoseconds of each live thread of the simulator, as "name ns" lines (schedstat).
threads_cpu() {
    local task name ns
    for task in /proc/"$pid"/task/*; do
        # A thread that ends meanwhile is skipped.
        name="$(tr ' ' _ <"$task/comm" 2>/dev/null)" || continue
        ns="$(cut -d' ' -f1 "$task/schedstat" 2>/dev/null)" || continue
        [[ -n "$name" && -n "$ns" ]] && printf '%s %s\n' "$name" "$ns"
    done
    return 0
}
hz=$(getconf CLK_TCK)
# Waits until the simulator is idle: after start-up ARM fills its pool of RSA keys (48 by
# default) on tokio's blocking threads, which share the async worker's thread name; a measure
# that overlaps them counts key generation as the worker's CPU.
wait_idle() {
    local began=$SECONDS last now
    last=$(ticks)
    while (( SECONDS - began < 300 )); do
        sleep 1
        now=$(ticks)
        # At most 1 % of a core over the second (one tick at the usual CLK_TCK of 100).
        if (( (now - last) * 100 <= hz )); then
            echo "simulator idle after $((SECONDS - began)) s" >&2
            return 0
        fi
        last=$now
    done
    echo "the simulator did not go idle in 300 s" >&2
    return 1
}
wait_idle
# wrk: requests/s, then the p50 and p99 lines of its latency distribution.
run() {
    local connections=$1 url=$2
    wrk -t1 -c"$connections" -d"${seconds}s" --latency -H "Metadata: true" "$url" |
        awk '/^ +50%/{p50=$2} /^ +99%/{p99=$2} /Requests\/sec/{rps=$2} /Non-2xx/{bad=$0}
             END{printf "%s/s p50 %s p99 %s %s\n", rps, p50, p99, bad}'
}

curl -sf -H "Metadata: true" "$token" >/dev/null # the first token: AAD's answer cached
# Warm-up: connections and caches.
wrk -t1 -c8 -d2s -H "Metadata: true" "$token" >/dev/null
# Versions and the cached token alternate for three rounds each and the medians are compared:
# this kind of machine's speed drifts within seconds by more than the difference measured.
versions=() cached=()
for _ in 1 2 3; do
    versions+=("$(run 8 "$imds/metadata/versions")")
    cached+=("$(run 8 "$token")")
done
median() { printf '%s\n' "$@" | sort -t/ -k1,1g | sed -n 2p; }
echo "versions, 8 connections:      $(median "${versions[@]}") (median of 3)"
echo "cached token, 8 connections:  $(median "${cached[@]}") (median of 3)"
python3 -c 'import sys; v, c = (float(a.split("/s")[0]) for a in sys.argv[1:]); print(f"  cached / versions requests/s: {c / v:.2f} (target >= 0.9)")' \
    "$(median "${versions[@]}")" "$(median "${cached[@]}")"
echo "cached token, 32 connections: $(run 32 "$token")"
# The reference is measured just before and just after the uncached run and averaged: this
# kind of machine drifts (docs/performance.md).
signs_before=$(./target/release/misim-bench --sign-rate 2>/dev/null)
before=$(ticks)
threads_cpu >"$dir/threads.before"
uncached=$(run 8 "$token&bypass_cache=true")
used=$(( $(ticks) - before ))
threads_cpu >"$dir/threads.after"
signs_after=$(./target/release/misim-bench --sign-rate 2>/dev/null)
echo "uncached token, 8 connections: $uncached"
python3 - "$uncached" "$used" "$hz" "$seconds" "$signs_before" "$signs_after" "$(nproc)" "$dir" <<'EOF'
import collections, sys
rate = float(sys.argv[1].split('/s')[0])
cpu = int(sys.argv[2]) / int(sys.argv[3])
seconds = float(sys.argv[4])
signs = (float(sys.argv[5]) + float(sys.argv[6])) / 2
cores = int(sys.argv[7])
capacity = rate * seconds / cpu * cores
print(f"  RSA-2048 signatures/s on {cores} threads (before and after, averaged): {signs:.0f}; "
      f"two per token allow {signs / 2:.0f}/s")
print(f"  throughput ratio {rate / (signs / 2):.2f}; server capacity {capacity:.0f}/s "
      f"(tokens per simulator CPU-second x {cores} cores), ratio {capacity / (signs / 2):.2f}")
# Where each token's CPU went, by thread name (threads alive at both ends of the run).
def by_name(path):
    totals = collections.Counter()
    for line in open(path):
        name, ns = line.split()
        totals[name] += int(ns)
    return totals
before, after = by_name(f"{sys.argv[8]}/threads.before"), by_name(f"{sys.argv[8]}/threads.after")
tokens = rate * seconds
parts = {name: (after[name] - before.get(name, 0)) / tokens / 1000 for name in after}
print("  CPU per token by thread: " + ", ".join(
    f"{name} {us:.0f} us" for name, us in sorted(parts.items(), key=lambda p: -p[1]) if us >= 1))
EOF
