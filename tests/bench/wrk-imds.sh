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
# loopback (the interop suites' tests/interop/isolated.sh): nothing here has a reason to leave
# the machine.
if [[ -z "${WRK_IMDS_ISOLATED:-}" ]]; then
    source tests/interop/isolated.sh wrk-imds
    export WRK_IMDS_ISOLATED=1
    exec_isolated "$self" "$@"
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
# Each live thread of the simulator as "name ns user system voluntary involuntary": CPU
# nanoseconds (schedstat), user and kernel clock ticks (stat) and context switches (status).
threads_cpu() {
    local task name ns stat switches
    for task in /proc/"$pid"/task/*; do
        # A thread that ends meanwhile is skipped.
        name="$(tr ' ' _ <"$task/comm" 2>/dev/null)" || continue
        ns="$(cut -d' ' -f1 "$task/schedstat" 2>/dev/null)" || continue
        # utime and stime: fields 14 and 15, the 12th and 13th after the ") " ending comm.
        stat="$(sed 's/.*) //' "$task/stat" 2>/dev/null | awk '{print $12, $13}')" || continue
        switches="$(awk '/^(non)?voluntary_ctxt_switches/{printf "%s ", $2}' "$task/status" 2>/dev/null)" || continue
        [[ -n "$name" && -n "$ns" && -n "$stat" && -n "$switches" ]] &&
            printf '%s %s %s %s\n' "$name" "$ns" "$stat" "$switches"
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
# this kind of machine's speed drifts within seconds by more than the difference measured. The
# simulator's CPU per request (from /proc) is printed too, to set beside misim-bench's cost
# ratio.
versions=() cached=()
# A failed wrk stops the script here (set -e does not reach into the $( ) of a caller).
measured() {
    local before out
    before=$(ticks)
    out=$(run "$@") || return
    printf '%s|%s' "$out" "$(( $(ticks) - before ))"
}
for _ in 1 2 3; do
    versions+=("$(measured 8 "$imds/metadata/versions")")
    cached+=("$(measured 8 "$token")")
done
python3 - "$hz" "$seconds" "${versions[@]}" "${cached[@]}" <<'EOF'
import statistics, sys
hz, seconds, runs = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
def summary(lines):
    parsed = [(line.split("|")[0].strip(), float(line.split("/s")[0]), int(line.split("|")[1])) for line in lines]
    middle = sorted(parsed, key=lambda p: p[1])[len(parsed) // 2]
    cost = statistics.median(ticks / hz / (rate * seconds) * 1e6 for _, rate, ticks in parsed)
    return middle, cost
(versions, versions_cost), (cached, cached_cost) = summary(runs[:3]), summary(runs[3:])
print(f"versions, 8 connections:      {versions[0]} (median of 3)")
print(f"cached token, 8 connections:  {cached[0]} (median of 3)")
print(f"  cached / versions requests/s: {cached[1] / versions[1]:.2f} (target >= 0.9)")
print(f"  simulator CPU per request: versions {versions_cost:.1f} us, cached token {cached_cost:.1f} us;"
      f" cost ratio {versions_cost / cached_cost:.2f}")
EOF
echo "cached token, 32 connections: $(run 32 "$token")"
# The uncached token in five rounds, each compared with the reference measured just before and
# just after it (averaged; neighbouring rounds share one): this kind of machine's signing rate
# drifts by more than the simulator's figures between runs (docs/performance.md). Medians of
# the rounds are reported, and the CPU per token by thread over all of them.
rounds=5
signs=("$(./target/release/misim-bench --sign-rate 2>/dev/null)")
threads_cpu >"$dir/threads.before"
round_lines=()
for round in $(seq "$rounds"); do
    before=$(ticks)
    uncached=$(run 8 "$token&bypass_cache=true")
    used=$(( $(ticks) - before ))
    signs+=("$(./target/release/misim-bench --sign-rate 2>/dev/null)")
    round_lines+=("$uncached|$used|${signs[round - 1]}|${signs[round]}")
done
threads_cpu >"$dir/threads.after"
python3 - "$hz" "$seconds" "$(nproc)" "$dir" "${round_lines[@]}" <<'EOF'
import collections, statistics, sys
hz, seconds, cores, folder = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rounds = []
for line in sys.argv[5:]:
    wrk, ticks, before, after = line.split("|")
    rate = float(wrk.split("/s")[0])
    signs = (float(before) + float(after)) / 2
    capacity = rate * seconds / (int(ticks) / hz) * cores
    rounds.append((wrk.strip(), rate, signs, rate / (signs / 2), capacity / (signs / 2)))
for number, (wrk, _, signs, throughput, capacity) in enumerate(rounds, 1):
    print(f"uncached token, 8 connections, round {number}: {wrk}")
    print(f"  against {signs:.0f} RSA-2048 signatures/s on {cores} threads: "
          f"throughput ratio {throughput:.2f}, server capacity ratio {capacity:.2f}")
median = lambda i: statistics.median(r[i] for r in rounds)
print(f"uncached token, medians of {len(rounds)} rounds: {median(1):.0f}/s against "
      f"{median(2):.0f} signatures/s (two per token allow {median(2) / 2:.0f}/s)")
print(f"  throughput ratio {median(3):.2f}; server capacity ratio {median(4):.2f} "
      f"(tokens per simulator CPU-second x {cores} cores; target >= 0.8)")
# Where each token's CPU went, by thread name (threads alive at both ends of the rounds).
def by_name(path):
    totals = collections.defaultdict(lambda: [0] * 5)
    for line in open(path):
        name, *counts = line.split()
        for i, count in enumerate(counts):
            totals[name][i] += int(count)
    return totals
before, after = by_name(f"{folder}/threads.before"), by_name(f"{folder}/threads.after")
tokens = sum(r[1] for r in rounds) * seconds
used = {name: [a - b for a, b in zip(after[name], before.get(name, [0] * 5))] for name in after}
shown = sorted((u for u in used.items() if u[1][0] / tokens >= 1000), key=lambda u: -u[1][0])
print("  CPU per token by thread: " + ", ".join(
    f"{name} {u[0] / tokens / 1000:.0f} us" for name, u in shown))
# The kernel's share of each thread's ticks and its sleeps (voluntary) and preemptions
# (involuntary) per token: on a virtual machine each wake-up across cores costs an interrupt,
# which the signing threads pay as kernel time while they sign (docs/performance.md).
print("  kernel share and switches per token: " + ", ".join(
    f"{name} {100 * u[2] / max(u[1] + u[2], 1):.0f} % ({u[3] / tokens:.2f} sleeps, {u[4] / tokens:.2f} preempted)"
    for name, u in shown))
# The reference loop's time per signature and thread (its CPU, if it was not preempted), to set
# beside the signing threads' CPU per signature.
print(f"  reference loop: {cores / median(2) * 1e6:.0f} us per signature and thread")
EOF
