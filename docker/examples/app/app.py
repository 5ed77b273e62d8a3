"""Example workload for misim: an app written exactly as it would run on Azure.

It authenticates with DefaultAzureCredential and nothing else configured, so
inside a VM (or a misim "VM" container) the chain ends up at the managed
identity endpoint of the Instance Metadata Service, http://169.254.169.254.
It then reads resource groups through azure-mgmt-resource
(ResourceManagementClient).

Configuration (environment only):
  AZURE_SUBSCRIPTION_ID  subscription to read (required)
  ARM_URL                ARM endpoint (default https://management.azure.com)
  READ_GROUP             resource group to GET (optional)
  READ_GROUPS            more resource groups to GET, comma-separated
                         (optional; all are reported under "read_groups",
                         READ_GROUP, or else the first one, under "read_group";
                         "skipped" when neither is set)
  APP_LOOP_SECONDS       when set, repeat the whole check every N seconds
                         forever, printing one result line per round
  EXPECT                 ignored by the app (for the harness that runs it)

TLS trust (e.g. REQUESTS_CA_BUNDLE) is the deployment's business, not the
app's.

Output: logs on stderr; per round exactly one stdout line
  MISIM_APP_RESULT {json}
Exit status (single round): 0 when a token was obtained (whatever ARM said),
2 when no token could be obtained, 1 on bad configuration.
"""

import base64
import json
import logging
import os
import signal
import sys
import time

from azure.core.exceptions import HttpResponseError
from azure.identity import DefaultAzureCredential
# azure-mgmt-resource >= 25 ships the client under .resources only.
from azure.mgmt.resource.resources import ResourceManagementClient

ARM_SCOPE = "https://management.azure.com/.default"
CLAIMS = ("oid", "appid", "xms_mirid", "iss", "aud", "tid", "sub")

log = logging.getLogger("misim-app")  # stderr only


def decode_claims(token):
    """Decode a JWT payload (base64url, no signature verification)."""
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    return json.loads(base64.urlsafe_b64decode(payload))


def error_code(err):
    """The ARM error code of an HttpResponseError, if there is one."""
    if getattr(err, "error", None) is not None and getattr(err.error, "code", None):
        return err.error.code
    try:
        return err.response.json()["error"]["code"]
    except Exception:  # noqa: BLE001 - any malformed body
        return None


def attempt(what, call):
    """Run one ARM call and classify it as allowed / denied / error."""
    try:
        value = call()
    except HttpResponseError as err:
        status = err.status_code
        code = error_code(err)
        outcome = "denied" if status == 403 else "error"
        log.info("%s: %s (HTTP %s %s)", what, outcome, status, code)
        return {"result": outcome, "status": status, "code": code}
    except Exception as err:  # noqa: BLE001 - report, don't crash the loop
        log.warning("%s: %s: %s", what, type(err).__name__, err)
        return {"result": "error", "status": None, "code": None,
                "message": f"{type(err).__name__}: {err}"}
    log.info("%s: allowed", what)
    return dict({"result": "allowed"}, **value)


def read(client, name):
    return dict(
        {"name": name},
        **attempt(f"GET resourceGroups/{name}",
                  lambda: {"group": client.resource_groups.get(name).name}),
    )


def check(credential, client, read_groups):
    result = {"time": int(time.time())}

    try:
        token = credential.get_token(ARM_SCOPE)
    except Exception as err:  # noqa: BLE001 - ClientAuthenticationError and friends
        first_line = (str(err).splitlines() or [""])[0]
        log.error("could not get a token: %s: %s", type(err).__name__, first_line)
        result["token"] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        return result, False

    try:
        claims = decode_claims(token.token)
    except Exception as err:  # noqa: BLE001 - not a JWT
        log.error("token is not a decodable JWT: %s", err)
        claims = {}
    result["token"] = {
        "ok": True,
        "expires_on": token.expires_on,
        "claims": {name: claims.get(name) for name in CLAIMS},
    }
    log.info("token for oid=%s appid=%s", claims.get("oid"), claims.get("appid"))

    result["read_groups"] = [read(client, name) for name in read_groups]
    result["read_group"] = (
        result["read_groups"][0] if read_groups else {"name": None, "result": "skipped"}
    )

    result["list_groups"] = attempt(
        "LIST resourceGroups",
        lambda: {"names": sorted(g.name for g in client.resource_groups.list())},
    )
    return result, True


def main():
    # PID 1 in a container gets no default SIGTERM handling: exit promptly on
    # `docker stop` instead of waiting for the SIGKILL.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    # The SDK is chatty at INFO (every HTTP request); keep its warnings.
    logging.getLogger("azure").setLevel(logging.WARNING)

    subscription_id = os.environ.get("AZURE_SUBSCRIPTION_ID", "").strip()
    arm_url = os.environ.get("ARM_URL", "").strip() or "https://management.azure.com"
    read_groups = []
    for name in [os.environ.get("READ_GROUP", "")] + os.environ.get("READ_GROUPS", "").split(","):
        name = name.strip()
        if name and name not in read_groups:
            read_groups.append(name)
    loop = os.environ.get("APP_LOOP_SECONDS", "").strip()

    if not subscription_id:
        log.error("AZURE_SUBSCRIPTION_ID is not set")
        return 1
    try:
        interval = float(loop) if loop else None
    except ValueError:
        log.error("APP_LOOP_SECONDS must be a number, got %r", loop)
        return 1

    credential = DefaultAzureCredential()
    client = ResourceManagementClient(
        credential,
        subscription_id,
        base_url=arm_url,
        credential_scopes=[ARM_SCOPE],
    )

    round_no = 0
    while True:
        round_no += 1
        result, ok = check(credential, client, read_groups)
        result = dict(
            {"round": round_no, "subscription_id": subscription_id, "arm_url": arm_url},
            **result,
        )
        print("MISIM_APP_RESULT " + json.dumps(result, sort_keys=True), flush=True)
        if interval is None:
            return 0 if ok else 2
        time.sleep(interval)


if __name__ == "__main__":
    sys.exit(main())
