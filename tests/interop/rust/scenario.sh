#!/usr/bin/env bash
# Inside the loopback-only namespace: start misim, run the probe in the demo VM (system-assigned)
# and in a second VM with a user-assigned identity chosen by client id; check the claims.
set -euo pipefail
data="$(mktemp -d)"
log="$data.log"
"$MISIM_BIN" --data-dir "$data" up --arm-port 0 --aad-port 0 --imds-port 0 --key-pool 4 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data" "$log"' EXIT
for _ in $(seq 100); do [[ -f "$data/connection.json" ]] && break; sleep 0.1; done
[[ -f "$data/connection.json" ]] || { cat "$log"; echo "rust interop: misim did not start" >&2; exit 1; }
misim() { "$MISIM_BIN" --data-dir "$data" "$@"; }
field() { python3 -c "import json,sys; d=json.load(open('$data/connection.json')); print($1)"; }

fail() { echo "rust interop: FAIL: $*" >&2; exit 1; }

# 1. System-assigned identity of the demo VM through IDENTITY_ENDPOINT/IDENTITY_HEADER.
out="$(misim vm exec demo-vm --app-service -- "$PROBE")" || fail "the probe got no token: $out"
demo_id="$(field 'd["demo_vm"]["id"]')"
mirid="$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['claims']['xms_mirid'])" "$out")"
[[ "${mirid,,}" == "${demo_id,,}" ]] || fail "xms_mirid $mirid is not the demo VM $demo_id"
echo "ok   azure_identity ManagedIdentityCredential (App Service variables): demo-vm's token"

# 2. A user-assigned identity selected by client id, on a second VM.
token="$(misim token)"
arm="$(field 'd["arm"]')"; sub="$(field 'd["subscription_id"]')"; ca="$(field 'd["ca_cert"]')"
rg="/subscriptions/$sub/resourceGroups/demo-rg"
curl -sf --cacert "$ca" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -X PUT \
  "$arm$rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/rust-id?api-version=2023-01-31" \
  -d '{"location":"eastus"}' >"$data/id.json" || fail "cannot create the identity"
client_id="$(python3 -c "import json; print(json.load(open('$data/id.json'))['properties']['clientId'])")"
identity_id="$(python3 -c "import json; print(json.load(open('$data/id.json'))['id'])")"
curl -sf --cacert "$ca" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -X PUT \
  "$arm$rg/providers/Microsoft.Compute/virtualMachines/rust-vm?api-version=2024-07-01" \
  -d "{\"location\":\"eastus\",\"identity\":{\"type\":\"UserAssigned\",\"userAssignedIdentities\":{\"$identity_id\":{}}},\"properties\":{\"hardwareProfile\":{\"vmSize\":\"Standard_B1s\"}}}" \
  >/dev/null || fail "cannot create rust-vm"
for _ in $(seq 50); do
  state="$(curl -sf --cacert "$ca" -H "Authorization: Bearer $token" "$arm$rg/providers/Microsoft.Compute/virtualMachines/rust-vm?api-version=2024-07-01" | python3 -c 'import json,sys; print(json.load(sys.stdin)["properties"]["provisioningState"])')"
  [[ "$state" == Succeeded ]] && break; sleep 0.2
done
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
