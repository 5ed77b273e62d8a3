#!/usr/bin/env bash
# Inside the loopback-only namespace: start misim, run probe.py (DefaultAzureCredential,
# ManagedIdentityCredential, MSAL ManagedIdentityClient) in the demo VM through `misim vm exec`,
# in IMDS mode and in App Service mode, and check each token's claims. Then a user-assigned
# identity chosen by client id, in App Service mode, on a second VM.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
data="$(mktemp -d)"
log="$data.log"
"$MISIM_BIN" --data-dir "$data" up --arm-port 0 --aad-port 0 --imds-port 0 --key-pool 4 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data" "$log"' EXIT
for _ in $(seq 100); do [[ -f "$data/connection.json" ]] && break; sleep 0.1; done
[[ -f "$data/connection.json" ]] || { cat "$log"; echo "vm_exec interop: misim did not start" >&2; exit 1; }
misim() { "$MISIM_BIN" --data-dir "$data" "$@"; }
field() { python3 -c "import json,sys; d=json.load(open('$data/connection.json')); print($1)"; }

fail() { echo "vm_exec interop: FAIL: $*" >&2; exit 1; }

token="$(misim token)"
arm="$(field 'd["arm"]')"; sub="$(field 'd["subscription_id"]')"; ca="$(field 'd["ca_cert"]')"
demo_id="$(field 'd["demo_vm"]["id"]')"
demo_principal="$(curl -sf --cacert "$ca" -H "Authorization: Bearer $token" "$arm$demo_id?api-version=2024-07-01" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["identity"]["principalId"])')" \
  || fail "cannot read the demo VM's principal id"

# check OUT MODE MIRID OID [APPID]: the probe's JSON against the expected identity; prints a summary.
check() {
  python3 - "$@" <<'PY'
import json, sys
out, mode, mirid, oid = sys.argv[1:5]
appid = sys.argv[5] if len(sys.argv) > 5 else None
result = json.loads(out)
c, env = result["claims"], result["env"]
problems = []
if c.get("xms_mirid", "").lower() != mirid.lower():
    problems.append(f"xms_mirid {c.get('xms_mirid')!r} is not {mirid!r}")
if c.get("oid") != oid:
    problems.append(f"oid {c.get('oid')!r} is not {oid!r}")
if c.get("aud", "").rstrip("/") != "https://management.azure.com":
    problems.append(f"aud {c.get('aud')!r} is not the ARM resource")
if appid is not None and c.get("appid") != appid:
    problems.append(f"appid {c.get('appid')!r} is not {appid!r}")
want = ["AZURE_POD_IDENTITY_AUTHORITY_HOST"] if mode == "imds" else ["IDENTITY_ENDPOINT", "IDENTITY_HEADER"]
if env != want:
    problems.append(f"the app saw {env}, not {want}")
if problems:
    sys.exit("; ".join(problems))
print(f"aud {c['aud']}, env {','.join(env)}, {result['elapsed']:.2f}s")
PY
}

declare -A names=([dac]="azure-identity DefaultAzureCredential()" [mic]="azure-identity ManagedIdentityCredential()" \
                  [msal]="msal ManagedIdentityClient(SystemAssignedManagedIdentity())")

# 1. The demo VM's system-assigned identity, each client, each mode.
for mode in imds app-service; do
  flag=(); [[ $mode == app-service ]] && flag=(--app-service)
  for case in dac mic msal; do
    out="$(misim vm exec demo-vm "${flag[@]}" -- "$PYTHON" "$here/probe.py" "$case")" \
      || fail "${names[$case]} ($mode) got no token: $out"
    summary="$(check "$out" "$mode" "$demo_id" "$demo_principal" 2>&1)" \
      || fail "${names[$case]} ($mode): $summary"
    echo "ok   ${names[$case]} ($mode): demo-vm's token; $summary"
  done
done

# 2. A user-assigned identity selected by client id, on a second VM, App Service mode.
rg="/subscriptions/$sub/resourceGroups/demo-rg"
curl -sf --cacert "$ca" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -X PUT \
  "$arm$rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/exec-id?api-version=2023-01-31" \
  -d '{"location":"eastus"}' >"$data/id.json" || fail "cannot create the identity"
read -r client_id principal_id identity_id < <(python3 -c "import json; d=json.load(open('$data/id.json')); print(d['properties']['clientId'], d['properties']['principalId'], d['id'])")
curl -sf --cacert "$ca" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -X PUT \
  "$arm$rg/providers/Microsoft.Compute/virtualMachines/exec-vm?api-version=2024-07-01" \
  -d "{\"location\":\"eastus\",\"identity\":{\"type\":\"UserAssigned\",\"userAssignedIdentities\":{\"$identity_id\":{}}},\"properties\":{\"hardwareProfile\":{\"vmSize\":\"Standard_B1s\"}}}" \
  >/dev/null || fail "cannot create exec-vm"
for _ in $(seq 50); do
  state="$(curl -sf --cacert "$ca" -H "Authorization: Bearer $token" "$arm$rg/providers/Microsoft.Compute/virtualMachines/exec-vm?api-version=2024-07-01" | python3 -c 'import json,sys; print(json.load(sys.stdin)["properties"]["provisioningState"])')"
  [[ "$state" == Succeeded ]] && break; sleep 0.2
done
for case in mic msal; do
  out="$(misim vm exec exec-vm --app-service -- "$PYTHON" "$here/probe.py" "$case" "$client_id")" \
    || fail "$case user-assigned (app-service) got no token: $out"
  summary="$(check "$out" app-service "$identity_id" "$principal_id" "$client_id" 2>&1)" \
    || fail "$case user-assigned (app-service): $summary"
  echo "ok   $case user-assigned identity by client id (app-service): exec-vm's identity; $summary"
done
