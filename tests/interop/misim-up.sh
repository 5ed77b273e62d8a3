# Sourced by the interop scenarios that run inside a loopback-only network namespace: starts
# `misim up` (every port 0, a small key pool) on a fresh data dir and stops it on exit. Defines
# `misim` (the CLI on that data dir), `field EXPR` (a connection.json field, EXPR a Python
# expression over `d`), `fail MESSAGE`, the admin's `token` with `arm`, `sub`, `ca` and `rg`, and
# `user_assigned_vm`. Needs MISIM_BIN, and SUITE for messages.
data="$(mktemp -d)"
log="$data.log"
"$MISIM_BIN" --data-dir "$data" up --arm-port 0 --aad-port 0 --imds-port 0 --key-pool 4 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data" "$log"' EXIT
for _ in $(seq 100); do [[ -f "$data/connection.json" ]] && break; sleep 0.1; done
[[ -f "$data/connection.json" ]] || { cat "$log"; echo "$SUITE: misim did not start" >&2; exit 1; }
misim() { "$MISIM_BIN" --data-dir "$data" "$@"; }
field() { python3 -c "import json,sys; d=json.load(open('$data/connection.json')); print($1)"; }
fail() { echo "$SUITE: FAIL: $*" >&2; exit 1; }

# As the bootstrap admin: `token`, `arm`, `sub`, `ca` and the demo resource group `rg`.
token="$(misim token)"
arm="$(field 'd["arm"]')"; sub="$(field 'd["subscription_id"]')"; ca="$(field 'd["ca_cert"]')"
rg="/subscriptions/$sub/resourceGroups/demo-rg"

# user_assigned_vm IDENTITY VM: a user-assigned identity and a VM carrying it, in demo-rg, the VM
# provisioned; sets client_id, principal_id and identity_id.
user_assigned_vm() {
  local ids state
  curl -sf --cacert "$ca" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -X PUT \
    "$arm$rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/$1?api-version=2023-01-31" \
    -d '{"location":"eastus"}' >"$data/$1.json" || fail "cannot create the identity $1"
  ids="$(python3 -c "import json; d=json.load(open('$data/$1.json')); print(d['properties']['clientId'], d['properties']['principalId'], d['id'])")" \
    || fail "the identity $1 has no clientId/principalId: $(cat "$data/$1.json")"
  read -r client_id principal_id identity_id <<<"$ids"
  curl -sf --cacert "$ca" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -X PUT \
    "$arm$rg/providers/Microsoft.Compute/virtualMachines/$2?api-version=2024-07-01" \
    -d "{\"location\":\"eastus\",\"identity\":{\"type\":\"UserAssigned\",\"userAssignedIdentities\":{\"$identity_id\":{}}},\"properties\":{\"hardwareProfile\":{\"vmSize\":\"Standard_B1s\"}}}" \
    >/dev/null || fail "cannot create $2"
  for _ in $(seq 50); do
    state="$(curl -sf --cacert "$ca" -H "Authorization: Bearer $token" "$arm$rg/providers/Microsoft.Compute/virtualMachines/$2?api-version=2024-07-01" | python3 -c 'import json,sys; print(json.load(sys.stdin)["properties"]["provisioningState"])')" \
      || fail "cannot read $2's provisioning state"
    [[ "$state" == Succeeded ]] && return; sleep 0.2
  done
  fail "$2 was not provisioned"
}
