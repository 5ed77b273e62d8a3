#!/usr/bin/env bash
# Unmodified Python apps (azure-identity DefaultAzureCredential / ManagedIdentityCredential, MSAL
# ManagedIdentityClient) get managed-identity tokens inside `misim vm exec`, in IMDS mode and in
# App Service mode.
#
#   tests/interop/vm_exec/run.sh
#
# Uses the venv of tests/interop (tests/interop/venv.sh). misim and the probes run inside a new network namespace holding only loopback: the
# clients' default IMDS address is 169.254.169.254, so a missed redirection fails at once instead
# of leaving the machine.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
source "$repo/tests/interop/isolated.sh" "vm_exec interop" --misim

# The venv of tests/interop (the official Python clients).
venv_python="$("$repo/tests/interop/venv.sh")"
export PYTHON="$venv_python"

exec_isolated timeout --kill-after=10 300 bash "$here/scenario.sh"
