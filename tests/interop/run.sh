#!/usr/bin/env bash
# Run the official-client interop suite against a misim binary.
#
#   tests/interop/run.sh [pytest args...]
#
# MISIM_BIN selects the binary (default: target/release/misim if it exists,
# else target/debug/misim). PYTHON selects the interpreter for the venv
# (default: python3). The venv lives in tests/interop/.venv and is rebuilt
# whenever requirements.txt or the interpreter changes (venv.sh).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="$("$here/venv.sh")"

cd "$repo"
exec "$python" -m pytest -q tests/interop "$@"
