#!/usr/bin/env bash
# Inside the loopback-only namespace: start misim, run the probe in the demo VM (system-assigned)
# and in a second VM with a user-assigned identity chosen by client id; check the claims.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SUITE="rust interop"
# shellcheck source=../misim-up.sh
source "$here/../misim-up.sh"

# 1. System-assigned identity of the demo VM through IDENTITY_ENDPOINT/IDENTITY_HEADER.
out="$(misim vm exec demo-vm --app-service -- "$PROBE")" || fail "the probe got no token: $out"
demo_id="$(field 'd["demo_vm"]["id"]')"
mirid="$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['claims']['xms_mirid'])" "$out")"
[[ "${mirid,,}" == "${demo_id,,}" ]] || fail "xms_mirid $mirid is not the demo VM $demo_id"
echo "ok   azure_identity ManagedIdentityCredential (App Service variables): demo-vm's token"

# 2. A user-assigned identity selected by client id, on a second VM.
user_assigned_vm rust-id rust-vm
out="$(PROBE_CLIENT_ID="$client_id" misim vm exec rust-vm --app-service -- "$PROBE")" || fail "no user-assigned token: $out"
appid="$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['claims']['appid'])" "$out")"
[[ "$appid" == "$client_id" ]] || fail "appid $appid is not the identity's client id $client_id"
echo "ok   azure_identity ManagedIdentityCredential: user-assigned identity by client id"

# 3. Isolation: rust-vm's endpoint never yields the demo VM's identity.
demo_principal="$(curl -sf --cacert "$ca" -H "Authorization: Bearer $token" "$arm$demo_id?api-version=2024-07-01" | python3 -c 'import json,sys; print(json.load(sys.stdin)["identity"]["principalId"])')"
if PROBE_OBJECT_ID="$demo_principal" misim vm exec rust-vm --app-service -- "$PROBE" >/dev/null 2>&1; then
  fail "rust-vm got a token for another VM's identity"
fi
echo "ok   azure_identity: a VM cannot get another VM's identity"
