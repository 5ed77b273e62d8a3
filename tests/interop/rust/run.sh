#!/usr/bin/env bash
# The Rust azure_identity crate (ManagedIdentityCredential, App Service variables) against misim.
#
#   tests/interop/rust/run.sh
#
# Builds the probe (tests/interop/rust, its own lock file and target dir), then runs misim and
# the probe inside a new network namespace holding only loopback: azure_identity's IMDS URL is
# hard-coded to 169.254.169.254, so a missed redirection fails at once instead of leaving the
# machine. The probe gets its environment from `misim vm exec VM --app-service`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
source "$repo/tests/interop/isolated.sh" "rust interop" --misim

target="$repo/target/interop-rust"
CARGO_TARGET_DIR="$target" cargo build --quiet --locked --manifest-path "$here/Cargo.toml"
export PROBE="$target/debug/misim-rust-probe"

exec_isolated timeout --kill-after=10 300 bash "$here/scenario.sh"
