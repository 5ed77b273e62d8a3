#!/usr/bin/env bash
# Creates or refreshes tests/interop/.venv (the official Python clients, pinned in
# requirements.txt) and prints its python. Rebuilt whenever requirements.txt or the interpreter
# changes. PYTHON selects the interpreter for the venv (default: python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
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
  "$python" -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$requirements" >&2
  echo "$want" > "$marker"
fi
echo "$venv/bin/python"
