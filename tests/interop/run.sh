#!/usr/bin/env bash
# Run the official-client interop suite against a misim binary.
#
#   tests/interop/run.sh [pytest args...]
#
# MISIM_BIN selects the binary (default: target/release/misim if it exists,
# else target/debug/misim). PYTHON selects the interpreter for the venv
# (default: python3). The venv lives in tests/interop/.venv and is rebuilt
# whenever requirements.txt or the interpreter changes (venv.sh).
#
# pytest, and the misim processes its fixtures start, run in a new network namespace holding
# only loopback (as the other suites do): the clients' defaults are real Azure hosts and
# 169.254.169.254, so a missed redirection fails at once, besides the suite's socket guard.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
source "$here/isolated.sh" interop
python="$("$here/venv.sh")"

cd "$repo"
exec_isolated "$python" -m pytest -q tests/interop "$@"
