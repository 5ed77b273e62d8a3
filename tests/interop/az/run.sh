#!/usr/bin/env bash
# Run the Azure CLI (az) interop scenario against a misim binary.
#
#   tests/interop/az/run.sh
#
# MISIM_BIN selects the binary (default: target/debug/misim). PYTHON selects
# the interpreter for the venv (default: python3). The venv lives in
# tests/interop/az/.venv and is rebuilt whenever requirements.txt or the
# interpreter changes. AZ_TIMEOUT bounds each az call (default 120 s),
# AZ_SUITE_TIMEOUT the whole scenario (default 900 s);
# KEEP_WORKDIR=1 keeps the work dir (az --debug logs) after a passing run.
#
# The scenario, and misim with it, runs in a new network namespace that holds
# only loopback: a request az sends anywhere but misim fails at once instead of
# leaving the machine. That needs root (or CAP_SYS_ADMIN), `unshare` and `ip`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"

source "$repo/tests/interop/isolated.sh" "az interop" --misim

# The az venv (tests/interop/az/.venv from its requirements.txt; azure-cli takes a few minutes
# to install the first time).
venv_python="$("$repo/tests/interop/venv.sh" "$here")"
venv="$(dirname "$(dirname "$venv_python")")"

cd "$repo"
# AZ_SUITE_TIMEOUT bounds the whole scenario (default 900 s; a passing run takes
# well under a minute); on expiry the scenario gets SIGTERM and stops misim.
exec_isolated timeout --kill-after=30 "${AZ_SUITE_TIMEOUT:-900}" \
  env AZ="$venv/bin/az" "$venv/bin/python" "$here/scenario.py"
