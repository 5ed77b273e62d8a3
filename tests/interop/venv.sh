#!/usr/bin/env bash
# Creates or refreshes a pinned Python venv and prints its python:
#
#   tests/interop/venv.sh [DIR]
#
# DIR (default: tests/interop, the official Python clients) holds requirements.txt; the venv is
# DIR/.venv, rebuilt whenever requirements.txt or the interpreter changes. PYTHON selects the
# interpreter for the venv (default: python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="$(cd "${1:-$here}" && pwd)"
venv="$dir/.venv"
requirements="$dir/requirements.txt"
python="${PYTHON:-python3}"
marker="$venv/.requirements.sha256"

want="$(
  {
    cat "$requirements"
    "$python" -c 'import sys; print(sys.version)'
  } | sha256sum | cut -d' ' -f1
)"

if [[ ! -x "$venv/bin/python" || ! -f "$marker" || "$(cat "$marker")" != "$want" ]]; then
  echo "interop: creating $venv (a few minutes the first time)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$requirements" >&2
  echo "$want" > "$marker"
fi
echo "$venv/bin/python"
