# Sourced by the interop runners: what every suite needs to run its clients, and misim with
# them, in a new network namespace holding only loopback. The clients' defaults are real Azure
# hosts and 169.254.169.254, so a missed redirection fails at once instead of leaving the machine.
#
#   source tests/interop/isolated.sh NAME [--misim]
#
# Checks that `unshare` and `ip` exist and that `unshare -n` is permitted (root or
# CAP_SYS_ADMIN); with --misim, also that MISIM_BIN (default target/debug/misim) is executable,
# and exports it. Defines `exec_isolated COMMAND...`, which replaces the shell with COMMAND in
# such a namespace.

interop_name=$1
interop_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
for tool in unshare ip; do
  command -v "$tool" >/dev/null || {
    echo "$interop_name: '$tool' is needed to isolate the network (apt-get install util-linux iproute2)" >&2
    exit 1
  }
done
unshare -n -- true 2>/dev/null || {
  echo "$interop_name: 'unshare -n' is not permitted here; the suite must run in a network" \
       "namespace of its own (run as root, or with CAP_SYS_ADMIN)" >&2
  exit 1
}
if [[ "${2:-}" == --misim ]]; then
  export MISIM_BIN="${MISIM_BIN:-$interop_repo/target/debug/misim}"
  [[ -x "$MISIM_BIN" ]] || {
    echo "$interop_name: misim binary not found: $MISIM_BIN (build it, or set MISIM_BIN)" >&2
    exit 1
  }
fi

exec_isolated() {
  exec unshare -n -- bash -c 'ip link set lo up && exec "$@"' _ "$@"
}
