#!/usr/bin/env bash
# Run the official-client interop suite against a misim binary.
#
#   tests/interop/run.sh [pytest args...]
#
# MISIM_BIN selects the binary (default: target/release/misim if it exists,
# else target/debug/misim). PYTHON selects the interpreter for the venv
# (default: python3). The venv lives in tests/interop/.venv and is rebuilt
# whenever requirements.txt or the interpreter changes.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$here/.venv"
requirements="$here/requirements.txt"
python="${PYTHON:-python3}"
marker="$venv/.requirements.sha256"

want="$(
  {
    cat "$requirements"
    "$python" -c 'import sys; print(sys.version)'
  } | sha256sum | cut -d' ' -f1
)"

if [[ ! -x "$venv/bin/python" || ! -f "$marker" || "$(cat "$marker")" != "$want" ]]; then
  echo "interop: creating $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$requirements"
  echo "$want" > "$marker"
fi

cd "$repo"
exec "$venv/bin/python" -m pytest -q tests/interop "$@"
