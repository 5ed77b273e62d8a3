#!/usr/bin/env bash
# Inside the loopback-only namespace: start misim, run probe.py (DefaultAzureCredential,
# ManagedIdentityCredential, MSAL ManagedIdentityClient) in the demo VM through `misim vm exec`,
# in IMDS mode and in App Service mode, and check each token's claims. Then a user-assigned
# identity chosen by client id, in App Service mode, on a second VM.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SUITE="vm_exec interop"
# shellcheck source=../misim-up.sh
source "$here/../misim-up.sh"

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
user_assigned_vm exec-id exec-vm
for case in mic msal; do
  out="$(misim vm exec exec-vm --app-service -- "$PYTHON" "$here/probe.py" "$case" "$client_id")" \
    || fail "$case user-assigned (app-service) got no token: $out"
  summary="$(check "$out" app-service "$identity_id" "$principal_id" "$client_id" 2>&1)" \
    || fail "$case user-assigned (app-service): $summary"
  echo "ok   $case user-assigned identity by client id (app-service): exec-vm's identity; $summary"
done
