"""Checks of the docker compose environment (run by tests/docker/run.sh once it is up).

The example apps in vm1 and vm2 (DefaultAzureCredential, azure-mgmt-resource, unchanged from
Azure) must each get a token for their own identity only, and ARM must decide as the seed's role
assignments say. Then the failure cases: AAD stopped -> IMDS answers retryable errors and
recovers; ARM and IMDS restarted -> nothing lost. The host side talks to the published loopback
ports with the standard library only; probes inside the VMs use the VM's own python.
"""

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

COMPOSE = os.environ["COMPOSE"].split() + ["-f", "docker/compose.yaml"]
WORK = os.environ["WORK"]
ARM = "https://127.0.0.1:%s" % os.environ["MISIM_ARM_HOST_PORT"]
AAD = "https://127.0.0.1:%s" % os.environ["MISIM_AAD_HOST_PORT"]
SUB = os.environ.get("MISIM_SUBSCRIPTION_ID", "2b2b9f7e-5c43-4f6e-9a57-5d1f1c0e7a11")
RESULT = "MISIM_APP_RESULT "

# What a VM runs to ask IMDS directly (the probe prints status and body as JSON).
IMDS_PROBE = r"""
import json, sys, urllib.request, urllib.error
url = "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/" + sys.argv[1]
req = urllib.request.Request(url, headers={"Metadata": "true"})
try:
    with urllib.request.urlopen(req, timeout=15) as r:
        print(json.dumps({"status": r.status, "body": json.load(r)}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "body": json.loads(e.read() or b"null"),
                      "retry_after": e.headers.get("Retry-After")}))
"""

# A VM must not reach anything beyond its network (internal: true): the host's gateway, 2 s.
ESCAPE_PROBE = r"""
import socket, sys
s = socket.socket(); s.settimeout(2)
try:
    s.connect((sys.argv[1], 443)); print("reached")
except OSError as e:
    print("blocked", e)
"""

failures = []


def check(condition, what):
    print(("ok   " if condition else "FAIL ") + what, flush=True)
    if not condition:
        failures.append(what)


def compose(*args, capture=True, check_rc=True):
    done = subprocess.run(COMPOSE + list(args), capture_output=capture, text=True)
    if check_rc and done.returncode != 0:
        raise RuntimeError("compose %s failed: %s" % (" ".join(args), done.stderr))
    return done.stdout


def container_of(service):
    return compose("ps", "-a", "-q", service).strip()


def in_vm(vm, script, *args):
    out = compose("exec", "-T", vm, "python3", "-c", script, *args)
    return out.strip().splitlines()[-1]


def imds(vm, query=""):
    return json.loads(in_vm(vm, IMDS_PROBE, query))


def app_results(vm):
    logs = compose("logs", "--no-color", vm)
    results = []
    for line in logs.splitlines():
        if RESULT in line:
            results.append(json.loads(line.split(RESULT, 1)[1]))
    return results


def wait_for(what, probe, timeout=180, interval=1.0):
    deadline = time.time() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.time() > deadline:
            raise RuntimeError("timed out waiting for " + what)
        time.sleep(interval)


def new_app_result(vm, after):
    def probe():
        fresh = [r for r in app_results(vm) if r.get("time", 0) > after]
        return fresh[-1] if fresh else None
    return wait_for("a new result from " + vm, probe)


def claims_of(result):
    return (result.get("token") or {}).get("claims") or {}


def groups_of(result):
    return {g.get("name"): g for g in result.get("read_groups", [])}


def copy_out(service, path):
    target = os.path.join(WORK, os.path.basename(path))
    subprocess.run(["docker", "cp", "%s:%s" % (container_of(service), path), target], check=True)
    return target


def http(method, url, token=None, form=None, headers=None, context=None):
    data = urllib.parse.urlencode(form).encode() if form else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if token:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=20, context=context) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def main():
    # The seed ran to completion (it prints what it created).
    wait_for("the seed", lambda: '"principals"' in compose("logs", "--no-color", "seed"))

    ca = copy_out("pki", "/pki/ca.pem")
    secret = open(copy_out("pki", "/pki/internal-secret")).read().strip()
    tls = ssl.create_default_context(cafile=ca)
    status, boot = http("GET", AAD + "/_internal/bootstrap",
                        headers={"x-misim-internal-secret": secret}, context=tls)
    check(status == 200, "AAD's bootstrap over the published port")
    status, body = http("POST", "%s/%s/oauth2/token" % (AAD, boot["tenantId"]), form={
        "grant_type": "client_credentials", "client_id": boot["adminClientId"],
        "client_secret": boot["adminClientSecret"], "resource": "https://management.azure.com/"},
        context=tls)
    admin = body["access_token"]

    def arm(path, api="2024-07-01"):
        sep = "&" if "?" in path else "?"
        return http("GET", "%s/subscriptions/%s%s%sapi-version=%s" % (ARM, SUB, path, sep, api),
                    token=admin, context=tls)

    _, vm1 = arm("/resourceGroups/app1-rg/providers/Microsoft.Compute/virtualMachines/vm1")
    _, ident = arm("/resourceGroups/app2-rg/providers/Microsoft.ManagedIdentity/"
                   "userAssignedIdentities/app2-id", api="2023-01-31")
    vm1_principal = vm1["identity"]["principalId"]
    app2 = ident["properties"]
    check(vm1["properties"]["provisioningState"] == "Succeeded", "vm1 provisioned")

    # Each app got a token for its own identity only, and RBAC decided as seeded.
    r1 = wait_for("vm1's app", lambda: (app_results("vm1") or [None])[-1])
    r2 = wait_for("vm2's app", lambda: (app_results("vm2") or [None])[-1])
    print("vm1:", json.dumps(r1), "\nvm2:", json.dumps(r2), flush=True)
    c1, c2 = claims_of(r1), claims_of(r2)
    check(c1.get("oid") == vm1_principal, "vm1's token is its system-assigned identity's")
    check(c1.get("xms_mirid", "").lower() == vm1["id"].lower(), "vm1's xms_mirid is the VM")
    check(c2.get("oid") == app2["principalId"], "vm2's token is app2-id's")
    check(c2.get("appid") == app2["clientId"], "vm2's appid is app2-id's client id")
    check(c2.get("xms_mirid", "").lower() == ident["id"].lower(), "vm2's xms_mirid is app2-id")
    groups1, groups2 = groups_of(r1), groups_of(r2)
    check(groups1.get("app1-rg", {}).get("result") == "allowed", "vm1 may read app1-rg")
    check(groups1.get("app2-rg", {}).get("status") == 403, "vm1 may not read app2-rg")
    check(groups2.get("app2-rg", {}).get("result") == "allowed", "vm2 may read app2-rg")
    check(groups2.get("app1-rg", {}).get("status") == 403, "vm2 may not read app1-rg")

    # Isolation: vm1 asking for vm2's identity finds nothing.
    for query in ("&client_id=" + app2["clientId"], "&object_id=" + app2["principalId"],
                  "&msi_res_id=" + ident["id"]):
        answer = imds("vm1", query)
        check(answer["status"] == 400 and "Identity not found" in json.dumps(answer["body"]),
              "vm1 cannot get app2-id's token (%s)" % query.split("=")[0].lstrip("&"))

    # The VM network leads nowhere else, and the host has no route into 169.254.0.0/16.
    routes = subprocess.run(["ip", "route", "show"], capture_output=True, text=True).stdout
    check("169.254." not in routes, "the host has no route in 169.254.0.0/16 while up")
    gateway = subprocess.run(["ip", "route", "show", "default"], capture_output=True,
                             text=True).stdout.split()
    gateway = gateway[2] if len(gateway) > 2 else "192.0.2.1"
    check(in_vm("vm1", ESCAPE_PROBE, gateway).startswith("blocked"),
          "vm1 cannot reach the host's gateway")

    # AAD stopped: IMDS answers at once with a retryable error; it recovers when AAD is back.
    compose("stop", "aad")
    answer = imds("vm1", "&bypass_cache=true")
    check(answer["status"] >= 500 and "error" in answer["body"],
          "with AAD stopped IMDS answers a retryable %s" % answer["status"])
    compose("start", "aad")
    answer = wait_for("a token after AAD is back",
                      lambda: (lambda a: a if a["status"] == 200 else None)(
                          imds("vm1", "&bypass_cache=true")), timeout=90)
    check(answer["status"] == 200, "IMDS recovers when AAD is back")

    # IMDS and ARM restarted: nothing lost, tokens flow and RBAC still decides.
    for service in ("imds", "arm"):
        before = time.time()
        compose("restart", service)
        answer = wait_for("a token after restarting " + service,
                          lambda: (lambda a: a if a["status"] == 200 else None)(
                              imds("vm1", "&bypass_cache=true")), timeout=90)
        check(answer["status"] == 200, "tokens flow after restarting %s" % service)
        fresh = new_app_result("vm1", int(before) + 1)
        check(claims_of(fresh).get("oid") == vm1_principal
              and groups_of(fresh).get("app1-rg", {}).get("result") == "allowed"
              and groups_of(fresh).get("app2-rg", {}).get("status") == 403,
              "vm1's app works as before after restarting %s" % service)

    if failures:
        print("%d check(s) failed" % len(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
