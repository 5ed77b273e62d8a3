#!/usr/bin/env bash
# Docker compose end-to-end test (`make docker-e2e`, part of `make test`): builds every image
# offline, brings docker/compose.yaml up under a throwaway project name, runs tests/docker/check.py
# against it, tears it down, and checks that the host's routes did not change.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
    echo "=================================================================="
    echo "SKIPPED tests/docker: no Docker engine reachable (docker info failed)"
    echo "=================================================================="
    exit 0
fi
if command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    echo "tests/docker: a Docker engine but no compose tool (docker-compose or docker compose)" >&2
    exit 1
fi

bin=${MISIM_BIN:-$root/target/debug/misim}
[ -x "$bin" ] || { echo "tests/docker: no misim binary at $bin (make build)" >&2; exit 1; }

started=$(date +%s)
routes_before=$(ip route show; ip -6 route show)
docker/build-image.sh "$bin"
docker/base/build-pybase.sh
docker/examples/build-app.sh
echo "tests/docker: images ready in $(( $(date +%s) - started )) s"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export COMPOSE_PROJECT_NAME=misim-e2e-$$
export MISIM_ARM_HOST_PORT=${MISIM_ARM_HOST_PORT:-$(free_port)}
export MISIM_AAD_HOST_PORT=${MISIM_AAD_HOST_PORT:-$(free_port)}
export MISIM_APP_LOOP_SECONDS=3
work=$(mktemp -d)

cleanup() {
    status=$?
    if [ $status -ne 0 ]; then
        echo "---- compose logs (failure) ----"
        "${compose[@]}" -f docker/compose.yaml logs --no-color --tail=60 || true
    fi
    "${compose[@]}" -f docker/compose.yaml down -v --remove-orphans >/dev/null 2>&1 || true
    routes_after=$(ip route show; ip -6 route show)
    if [ "$routes_before" != "$routes_after" ]; then
        echo "tests/docker: FAIL: the host's routes changed:" >&2
        diff <(echo "$routes_before") <(echo "$routes_after") >&2 || true
        status=1
    fi
    if ip -4 addr show | grep -q 'inet 169\.254\.'; then
        echo "tests/docker: FAIL: the host holds an address in 169.254.0.0/16" >&2
        status=1
    fi
    rm -rf "$work"
    echo "tests/docker: $([ $status -eq 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - started )) s"
    exit $status
}
trap cleanup EXIT

"${compose[@]}" -f docker/compose.yaml up -d
MISIM_BIN=$bin COMPOSE="${compose[*]}" WORK=$work python3 tests/docker/check.py
