#!/usr/bin/env python3
"""Azure CLI (az) against misim, end to end.

Run through tests/interop/az/run.sh, which puts this script in a network
namespace that holds only loopback: misim is started here, inside the same
namespace, so any request az makes to a real Azure host fails at once.

Environment:
  MISIM_BIN    misim binary (default: <repo>/target/debug/misim)
  AZ           az executable (default: the az next to this interpreter)
  AZ_TIMEOUT   seconds allowed for each az call (default: 120)
  KEEP_WORKDIR keep the work dir (logs, config dirs, misim data) even on success

Every az call runs with --debug; its stderr goes to <workdir>/logs/NN-label.log.
On failure the work dir is kept and its path printed, so requests and
responses can be quoted from those logs.
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The pytest suite's toy OIDC issuer (tests/interop/oidc_issuer.py).
sys.path.insert(0, str(HERE.parent))
from oidc_issuer import OidcIssuer  # noqa: E402
REPO = HERE.parent.parent.parent
MISIM_BIN = os.environ.get("MISIM_BIN") or str(REPO / "target" / "debug" / "misim")
AZ = os.environ.get("AZ") or str(Path(sys.executable).parent / "az")
AZ_TIMEOUT = int(os.environ.get("AZ_TIMEOUT", "120"))

# Built-in role definition ids (the same in every Azure tenant).
READER_ROLE_ID = "acdd72a7-3385-48ef-bd42-f606fba81ae7"

CLOUD = "MisimCloud"


class StepFailed(Exception):
    """The steps that follow cannot run (a required check failed, or az or misim hung)."""

    def __init__(self, what, recorded=False):
        super().__init__(what)
        self.recorded = recorded


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = []

    def ok(self, what):
        self.passed += 1
        print(f"  ok    {what}", flush=True)

    def bad(self, what):
        self.failed.append(what)
        print(f"  FAIL  {what}", flush=True)


results = Results()


def check(cond, what, detail=""):
    """A soft check: record it and go on."""
    if cond:
        results.ok(what)
    else:
        results.bad(what + (f"\n        {detail}" if detail else ""))
    return cond


def require(cond, what, detail=""):
    """A check the following steps depend on."""
    if not check(cond, what, detail):
        raise StepFailed(what, recorded=True)


# ---------------------------------------------------------------- misim


def _die_with_parent():
    """In the child: get SIGTERM when this script dies, even by SIGKILL (Linux)."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Misim:
    def __init__(self, workdir):
        self.data_dir = workdir / "misim"
        self.log_path = workdir / "logs" / "misim.log"
        self.proc = None
        self.conn = None

    def start(self):
        if not os.access(MISIM_BIN, os.X_OK):
            raise StepFailed(f"misim binary not found or not executable: {MISIM_BIN} (set MISIM_BIN)")
        self.data_dir.mkdir(parents=True)
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [MISIM_BIN, "up", "--data-dir", str(self.data_dir),
             "--arm-port", "0", "--aad-port", "0", "--imds-port", "0"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent,
        )
        conn_path = self.data_dir / "connection.json"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StepFailed(f"misim exited with {self.proc.returncode} before it was ready; "
                                 f"see {self.log_path}")
            try:
                self.conn = json.loads(conn_path.read_text())
                return self.conn
            except (FileNotFoundError, json.JSONDecodeError):
                time.sleep(0.1)
        raise StepFailed(f"misim did not write {conn_path} within 60 s; see {self.log_path}")

    def vm_env(self, vm):
        """The environment `misim vm env VM` asks for: {name: value or None (unset)}."""
        out = subprocess.run(
            [MISIM_BIN, "vm", "env", vm, "--data-dir", str(self.data_dir)],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
        env = {}
        for line in out.splitlines():
            words = shlex.split(line)
            if len(words) == 2 and words[0] == "export" and "=" in words[1]:
                name, value = words[1].split("=", 1)
                env[name] = value
            elif len(words) >= 2 and words[0] == "unset":
                for name in words[1:]:
                    env[name] = None
            elif words:
                raise StepFailed(f"unexpected line from `misim vm env`: {line!r}")
        return env

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------- az


class AzResult:
    def __init__(self, args, proc, log_path):
        self.args = args
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.log_path = log_path
        self.stderr = proc.stderr

    @property
    def ok(self):
        return self.rc == 0

    def json(self):
        try:
            return json.loads(self.stdout) if self.stdout.strip() else None
        except json.JSONDecodeError:
            return None

    def error(self):
        """az's own error lines (ERROR: ...), without the --debug noise."""
        lines = [l for l in self.stderr.splitlines() if l.startswith("ERROR")]
        return "\n".join(lines) or self.stderr.strip()[-2000:]

    def describe(self):
        return (f"`az {' '.join(self.args)}` exited {self.rc}: {self.error()}\n"
                f"        debug log: {self.log_path}")


class Az:
    """az with one AZURE_CONFIG_DIR (one login) and a fixed environment."""

    counter = 0

    def __init__(self, name, workdir, env):
        self.name = name
        self.workdir = workdir
        self.config_dir = workdir / f"azure-{name}"
        self.config_dir.mkdir()
        self.env = dict(env, AZURE_CONFIG_DIR=str(self.config_dir))

    def set_env(self, extra):
        for key, value in extra.items():
            if value is None:
                self.env.pop(key, None)
            else:
                self.env[key] = value

    def __call__(self, *args, label=None):
        Az.counter += 1
        label = label or "-".join(a for a in args[:3] if not a.startswith("-"))
        log_path = self.workdir / "logs" / f"{Az.counter:02d}-{self.name}-{label}.log"
        argv = [AZ, *args, "--debug"]
        if "-o" not in args and "--output" not in args:
            argv += ["-o", "json"]
        try:
            proc = subprocess.run(argv, env=self.env, capture_output=True, text=True,
                                  timeout=AZ_TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as ex:
            log_path.write_text((ex.stderr or b"").decode(errors="replace")
                                if isinstance(ex.stderr, bytes) else (ex.stderr or ""))
            raise StepFailed(f"`az {' '.join(args)}` did not finish within {AZ_TIMEOUT} s; "
                             f"debug log: {log_path}")
        log_path.write_text(f"$ az {' '.join(args)}\n# exit {proc.returncode}\n"
                            f"# stdout:\n{proc.stdout}\n# stderr:\n{proc.stderr}")
        self.last = AzResult(list(args), proc, log_path)
        return self.last

    def ok(self, *args, label=None):
        """Run az, require exit 0 and return its JSON output (None when empty)."""
        res = self(*args, label=label)
        if not res.ok:
            require(False, f"az {' '.join(args)}", res.describe())
        return res.json()


# ---------------------------------------------------------------- scenario


def base_env(conn):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AZURE_", "IDENTITY_", "MSI_", "IMDS_", "ARM_CLOUD_"))
           and k not in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")}
    env.update(
        AZURE_CORE_COLLECT_TELEMETRY="no",
        AZURE_CORE_INSTANCE_DISCOVERY="false",
        AZURE_CORE_ONLY_SHOW_ERRORS="true",
        AZURE_CORE_NO_COLOR="true",
        AZURE_CORE_SURVEY_MESSAGE="false",
        REQUESTS_CA_BUNDLE=conn["ca_cert"],
        SSL_CERT_FILE=conn["ca_cert"],
    )
    return env


def use_sim_cloud(az, conn):
    """a. register misim as a cloud from its ARM metadata endpoint, and select it."""
    az.ok("cloud", "register", "-n", CLOUD, "--endpoint-resource-manager", conn["arm"])
    az.ok("cloud", "set", "-n", CLOUD)
    cloud = az.ok("cloud", "show")
    ep = cloud["endpoints"]
    check(cloud["name"] == CLOUD and cloud["isActive"],
          f"[{az.name}] {CLOUD} is the active cloud", json.dumps(cloud)[:500])
    check(ep["resourceManager"].rstrip("/") == conn["arm"],
          f"[{az.name}] cloud resourceManager is misim's ARM", ep["resourceManager"])
    check(ep["activeDirectory"].rstrip("/") == conn["aad"],
          f"[{az.name}] cloud activeDirectory is misim's AAD", ep["activeDirectory"])
    check((ep.get("microsoftGraphResourceId") or "").rstrip("/") == conn["graph"],
          f"[{az.name}] cloud microsoftGraphResourceId is misim's Graph",
          str(ep.get("microsoftGraphResourceId")))


def login_admin(az, conn):
    """b. service-principal login as the bootstrap admin."""
    admin = conn["admin"]
    accounts = az.ok("login", "--service-principal", "-u", admin["client_id"],
                     "-p", admin["client_secret"], "--tenant", conn["tenant_id"])
    subs = [a["id"] for a in accounts or []]
    require(conn["subscription_id"] in subs,
            f"[{az.name}] az login --service-principal lists the sim subscription", json.dumps(accounts))
    acct = az.ok("account", "show")
    require(acct["id"] == conn["subscription_id"] and acct["tenantId"] == conn["tenant_id"]
            and acct["user"]["type"] == "servicePrincipal"
            and acct["user"]["name"] == admin["client_id"],
            f"[{az.name}] az account show: sim subscription, tenant and admin",
            json.dumps(acct))


def federated_login(admin, ci, conn):
    """d4. A pipeline's OIDC token, trusted by an application's federated credential, logs az
    in as the application (`az login --service-principal --federated-token`)."""
    sub, tenant = conn["subscription_id"], conn["tenant_id"]
    issuer = OidcIssuer()
    try:
        app = admin.ok("ad", "app", "create", "--display-name", "app-ci", label="app-create-ci") or {}
        sp = admin.ok("ad", "sp", "create", "--id", app.get("appId", "")) or {}
        require(bool(app.get("appId")) and bool(sp.get("id")), "az ad app create / az ad sp create for CI",
                json.dumps({"app": app, "sp": sp})[:800])
        subject = "repo:contoso/app:ref:refs/heads/main"
        admin.ok("ad", "app", "federated-credential", "create", "--id", app["appId"], "--parameters",
                 json.dumps({"name": "main", "issuer": issuer.url, "subject": subject,
                             "audiences": ["api://AzureADTokenExchange"]}), label="fic-create-ci")
        admin.ok("role", "assignment", "create", "--assignee-object-id", sp["id"],
                 "--assignee-principal-type", "ServicePrincipal", "--role", "Reader",
                 "--scope", f"/subscriptions/{sub}", label="role-assignment-ci")
        use_sim_cloud(ci, conn)
        accounts = ci("login", "--service-principal", "-u", app["appId"], "--tenant", tenant,
                      "--federated-token", issuer.token(subject, lifetime_s=600), label="login-federated")
        listed = accounts.json() or [] if accounts.ok else []
        check(accounts.ok and sub in [a.get("id") for a in listed]
              and all(a.get("user", {}).get("name") == app["appId"] for a in listed),
              "az login --service-principal --federated-token (an OIDC token the app trusts)",
              accounts.describe() if not accounts.ok else json.dumps(listed)[:800])
        groups = ci("group", "list", label="group-list-ci")
        check(groups.ok and "rg-az" in [g["name"] for g in groups.json() or []],
              "az group list as the federated application (Reader)",
              groups.describe() if not groups.ok else groups.stdout[:500])
        # Cleared first: MSAL would answer a second login from the first one's cached token.
        ci.ok("account", "clear", label="account-clear-ci")
        other = ci("login", "--service-principal", "-u", app["appId"], "--tenant", tenant,
                   "--federated-token", issuer.token("repo:contoso/app:pull_request", lifetime_s=600),
                   label="login-federated-other-subject")
        check(not other.ok and "AADSTS70021" in other.error(),
              "az login --federated-token for another subject: AADSTS70021",
              other.describe() if not other.ok else other.stdout[:500])
        admin.ok("ad", "app", "delete", "--id", app["appId"], label="app-delete-ci")
    finally:
        issuer.close()


def scenario(workdir, misim):
    conn = misim.start()
    sub, tenant = conn["subscription_id"], conn["tenant_id"]
    print(f"misim up: ARM {conn['arm']}  AAD {conn['aad']}  IMDS {conn['imds']}", flush=True)
    env = base_env(conn)

    print("a/b. cloud register + service-principal login", flush=True)
    admin = Az("admin", workdir, env)
    use_sim_cloud(admin, conn)
    login_admin(admin, conn)
    token = admin.ok("account", "get-access-token")
    check(token.get("subscription") == sub and token.get("tenant") == tenant
          and token.get("accessToken"),
          "az account get-access-token returns an ARM token for the sim subscription",
          json.dumps({k: v for k, v in (token or {}).items() if k != "accessToken"}))

    print("c. resource group and user-assigned identity", flush=True)
    rg = admin.ok("group", "create", "-n", "rg-az", "-l", "eastus")
    rg_scope = f"/subscriptions/{sub}/resourceGroups/rg-az"
    check(rg["name"] == "rg-az" and rg["location"] == "eastus"
          and rg["id"].lower() == rg_scope.lower()
          and rg["properties"]["provisioningState"] == "Succeeded",
          "az group create rg-az", json.dumps(rg))
    ident = admin.ok("identity", "create", "-g", "rg-az", "-n", "id-az")
    require(all(ident.get(k) for k in ("clientId", "principalId", "tenantId")),
            "az identity create returns clientId, principalId and tenantId", json.dumps(ident))
    check(ident["tenantId"] == tenant and ident["name"] == "id-az"
          and ident["id"].lower() == f"{rg_scope}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-az".lower(),
          "az identity create: tenant, name and id", json.dumps(ident))
    shown = admin.ok("identity", "show", "-g", "rg-az", "-n", "id-az")
    check(all(shown.get(k) == ident[k] for k in ("id", "clientId", "principalId", "tenantId")),
          "az identity show matches create", json.dumps(shown))
    listed = admin.ok("identity", "list", "-g", "rg-az")
    check(len(listed) == 1 and listed[0]["principalId"] == ident["principalId"],
          "az identity list -g rg-az has exactly id-az", json.dumps(listed))

    # The VM commands a managed-identity user types: az reads the VM, then writes it back.
    vm_identity = ("vm", "identity")
    vm_at = ("-g", "demo-rg", "-n", "demo-vm")
    before = admin.ok("vm", "show", *vm_at, label="vm-show-before-assign") or {}
    assigned = admin.ok(*vm_identity, "assign", *vm_at, "--identities", ident["id"],
                        label="vm-identity-assign") or {}
    attached = {k.lower(): v for k, v in (assigned.get("userAssignedIdentities") or {}).items()}
    # az prints {"systemAssignedIdentity": principal id, "userAssignedIdentities": {id: {...}}}.
    check(assigned.get("systemAssignedIdentity") == before.get("identity", {}).get("principalId")
          and attached.get(ident["id"].lower(), {}).get("principalId") == ident["principalId"],
          "az vm identity assign --identities id-az attaches it beside the system identity",
          json.dumps(assigned)[:800])
    after = admin.ok("vm", "show", *vm_at, label="vm-show-after-assign") or {}
    check(after.get("etag") not in (None, before.get("etag"))
          and after.get("identity", {}).get("principalId") == before.get("identity", {}).get("principalId"),
          "the VM's etag moved with the assignment; its system identity stayed",
          json.dumps({"before": before.get("etag"), "after": after.get("etag")}))
    admin.ok(*vm_identity, "remove", *vm_at, "--identities", ident["id"], label="vm-identity-remove")
    shown_vm = admin.ok(*vm_identity, "show", *vm_at, label="vm-identity-show") or {}
    check(shown_vm.get("type") == "SystemAssigned" and not shown_vm.get("userAssignedIdentities"),
          "az vm identity remove --identities id-az leaves the system identity only",
          json.dumps(shown_vm)[:800])

    # Generic resource commands: az asks the provider for an api-version, and sends $filter.
    by_id = admin.ok("resource", "show", "--ids", ident["id"], label="resource-show-by-id")
    check(by_id.get("name") == "id-az" and by_id.get("type") == "Microsoft.ManagedIdentity/userAssignedIdentities",
          "az resource show --ids (api-version from the provider's resource types)", json.dumps(by_id)[:800])
    resources = admin.ok("resource", "list", "-g", "rg-az")
    check([r["name"] for r in resources] == ["id-az"], "az resource list -g rg-az", json.dumps(resources)[:800])
    admin.ok("group", "update", "-n", "rg-az", "--tags", "purpose=az")
    tagged = admin.ok("group", "list", "--tag", "purpose=az", label="group-list-by-tag")
    check([g["name"] for g in tagged] == ["rg-az"], "az group list --tag purpose=az filters by tag",
          json.dumps([g["name"] for g in tagged]))

    print("d. role assignment for the user-assigned identity", flush=True)
    create_args = ("role", "assignment", "create", "--assignee-object-id", ident["principalId"],
                   "--assignee-principal-type", "ServicePrincipal", "--role", "Reader",
                   "--scope", rg_scope)
    ra = admin.ok(*create_args)
    require(ra["principalId"] == ident["principalId"]
            and ra["roleDefinitionId"].lower().endswith(READER_ROLE_ID)
            and ra["scope"].lower() == rg_scope.lower(),
            "az role assignment create (Reader on rg-az)", json.dumps(ra))
    again = admin(*create_args, label="role-assignment-create-again")
    check(again.ok and (again.json() or {}).get("id") == ra["id"],
          "az role assignment create again returns the existing assignment",
          again.describe() if not again.ok else json.dumps(again.json()))
    ras = admin.ok("role", "assignment", "list", "--scope", rg_scope,
                   "--assignee-object-id", ident["principalId"])
    ras_log = admin.last.log_path
    check(len(ras) == 1 and ras[0]["id"] == ra["id"]
          and ras[0].get("roleDefinitionName") == "Reader",
          "az role assignment list shows one Reader assignment", json.dumps(ras))
    # The identity's service principal in Graph; az names a service principal in
    # role assignment lists by its first servicePrincipalName (for a managed
    # identity, its client id), fetched with POST /v1.0/directoryObjects/getByIds.
    sp = admin.ok("ad", "sp", "show", "--id", ident["principalId"])
    check(sp.get("appId") == ident["clientId"] and sp.get("servicePrincipalType") == "ManagedIdentity"
          and sp.get("displayName") == "id-az",
          "az ad sp show: the identity's service principal", json.dumps(sp)[:800])
    check(ras and ras[0].get("principalName") == ident["clientId"],
          "az role assignment list fills principalName from Graph (directoryObjects/getByIds)",
          f"principalName={ras[0].get('principalName') if ras else None!r}, "
          f"expected the client id {ident['clientId']}; see the getByIds request in "
          f"{ras_log}")
    with_groups = admin.ok("role", "assignment", "list", "--scope", rg_scope, "--include-groups",
                           "--assignee-object-id", ident["principalId"], label="role-assignment-list-include-groups")
    check([r["id"] for r in with_groups] == [ra["id"]],
          "az role assignment list --include-groups (atScope() and assignedTo())", json.dumps(with_groups)[:800])
    by_app = admin.ok("role", "assignment", "list", "--scope", rg_scope,
                      "--assignee", ident["clientId"], label="role-assignment-list-by-app-id")
    check([r["id"] for r in by_app] == [ra["id"]],
          "az role assignment list --assignee <client id> resolves the principal through Graph",
          json.dumps(by_app))

    print("d2. a custom role", flush=True)
    role_def = {"Name": "misim Group Reader", "Description": "reads resource groups",
                "Actions": ["Microsoft.Resources/subscriptions/resourceGroups/read"],
                "AssignableScopes": [f"/subscriptions/{sub}"]}
    custom = admin.ok("role", "definition", "create", "--role-definition", json.dumps(role_def))
    check(custom.get("roleName") == "misim Group Reader"
          and "CustomRole" in (custom.get("roleType"), custom.get("type")),
          "az role definition create makes a custom role", json.dumps(custom)[:800])
    found = admin.ok("role", "definition", "list", "--custom-role-only", "true", "--name", "misim Group Reader")
    check([d.get("name") for d in found] == [custom.get("name")],
          "az role definition list --custom-role-only --name finds it", json.dumps(found)[:800])
    custom_ra = admin.ok("role", "assignment", "create", "--assignee-object-id", ident["principalId"],
                         "--assignee-principal-type", "ServicePrincipal", "--role", "misim Group Reader",
                         "--scope", rg_scope, label="role-assignment-create-custom")
    check(custom_ra.get("roleDefinitionId", "").lower().endswith(custom.get("name", "?").lower()),
          "az role assignment create --role <custom role name>", json.dumps(custom_ra)[:800])
    busy = admin("role", "definition", "delete", "--name", "misim Group Reader", label="role-definition-delete-assigned")
    check(not busy.ok and "RoleDefinitionHasAssignments" in busy.error(),
          "az role definition delete refuses a role still assigned", busy.describe() if busy.ok else busy.error()[:500])
    admin.ok("role", "assignment", "delete", "--ids", custom_ra["id"])
    admin.ok("role", "definition", "delete", "--name", "misim Group Reader")
    gone = admin.ok("role", "definition", "list", "--custom-role-only", "true", "--name", "misim Group Reader",
                    label="role-definition-list-after-delete")
    check(gone == [], "az role definition delete: the custom role is gone", json.dumps(gone)[:500])

    print("d2b. a role assignment with an ABAC condition", flush=True)
    condition = ("((!(ActionMatches{'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read'}))"
                 " OR (@Resource[Microsoft.Storage/storageAccounts/blobServices/containers:name]"
                 " StringEquals 'logs'))")
    conditional = admin.ok("role", "assignment", "create", "--assignee-object-id", ident["principalId"],
                           "--assignee-principal-type", "ServicePrincipal",
                           "--role", "Storage Blob Data Reader", "--scope", rg_scope,
                           "--condition", condition, "--condition-version", "2.0",
                           "--description", "logs only", label="role-assignment-create-condition") or {}
    check(conditional.get("condition") == condition and conditional.get("conditionVersion") == "2.0"
          and conditional.get("description") == "logs only",
          "az role assignment create --condition --condition-version 2.0 (kept as given)",
          json.dumps(conditional)[:800])
    listed = admin.ok("role", "assignment", "list", "--scope", rg_scope, "--role", "Storage Blob Data Reader",
                      label="role-assignment-list-condition") or []
    check([r.get("condition") for r in listed] == [condition],
          "az role assignment list shows the condition", json.dumps(listed)[:800])
    owner_with_condition = admin("role", "assignment", "create", "--assignee-object-id", ident["principalId"],
                                 "--assignee-principal-type", "ServicePrincipal", "--role", "Owner",
                                 "--scope", rg_scope, "--condition", condition, "--condition-version", "2.0",
                                 label="role-assignment-create-owner-condition")
    check(not owner_with_condition.ok and "InvalidParameter" in owner_with_condition.error(),
          "az role assignment create --condition on Owner is refused (misim does not evaluate conditions)",
          owner_with_condition.describe() if not owner_with_condition.ok else owner_with_condition.stdout[:500])
    if conditional.get("id"):
        admin.ok("role", "assignment", "delete", "--ids", conditional["id"], label="role-assignment-delete-condition")

    print("d3. an application's federated credentials", flush=True)
    app = admin.ok("ad", "app", "create", "--display-name", "app-fic") or {}
    require(bool(app.get("appId")), "az ad app create", json.dumps(app)[:800])
    fic_params = {"name": "github-main", "issuer": "https://token.actions.githubusercontent.com",
                  "subject": "repo:contoso/app:ref:refs/heads/main",
                  "audiences": ["api://AzureADTokenExchange"], "description": "deploys from main"}
    fic_cmd = ("ad", "app", "federated-credential")
    fic = admin.ok(*fic_cmd, "create", "--id", app["appId"], "--parameters", json.dumps(fic_params)) or {}
    check(bool(fic.get("id")) and all(fic.get(k) == v for k, v in fic_params.items()),
          "az ad app federated-credential create (the app named by its appId)", json.dumps(fic)[:800])
    listed = admin.ok(*fic_cmd, "list", "--id", app["appId"]) or []
    check([f.get("name") for f in listed] == ["github-main"],
          "az ad app federated-credential list", json.dumps(listed)[:800])
    admin.ok(*fic_cmd, "update", "--id", app["appId"], "--federated-credential-id", "github-main",
             "--parameters", json.dumps({**fic_params, "subject": "repo:contoso/app:environment:prod"}))
    shown = admin.ok(*fic_cmd, "show", "--id", app["appId"], "--federated-credential-id", fic.get("id", "")) or {}
    check(shown.get("subject") == "repo:contoso/app:environment:prod",
          "az ad app federated-credential update, then show by id", json.dumps(shown)[:800])
    again = admin(*fic_cmd, "create", "--id", app["appId"], "--parameters", json.dumps(fic_params),
                  label="fic-create-same-name")
    check(not again.ok and "already exists" in again.error(),
          "az ad app federated-credential create with a taken name is refused",
          again.describe() if not again.ok else again.stdout[:500])
    admin.ok(*fic_cmd, "delete", "--id", app["appId"], "--federated-credential-id", "github-main")
    gone = admin.ok(*fic_cmd, "list", "--id", app["appId"], label="fic-list-after-delete")
    check(gone == [], "az ad app federated-credential delete", json.dumps(gone)[:500])
    admin.ok("ad", "app", "delete", "--id", app["appId"])

    print("d4. az login --federated-token, as GitHub Actions' azure/login does", flush=True)
    federated_login(admin, Az("ci", workdir, env), conn)

    print("e. managed identity of the demo VM", flush=True)
    vm_env = misim.vm_env("demo-vm")
    require(vm_env.get("AZURE_POD_IDENTITY_AUTHORITY_HOST") == conn["imds"],
            "misim vm env demo-vm points AZURE_POD_IDENTITY_AUTHORITY_HOST at the demo VM's IMDS",
            json.dumps(vm_env))
    # From here on every az call, the admin's too, runs with the VM environment.
    admin.set_env(vm_env)
    mi = Az("vm", workdir, env)
    mi.set_env(vm_env)
    use_sim_cloud(mi, conn)

    # The demo VM's identity has no role yet. Azure lists a subscription only to
    # a principal with access to it, so a plain `az login --identity` must fail
    # with "No access was configured ... no subscriptions were found".
    plain = mi("login", "--identity", label="login-identity-no-role")
    check(not plain.ok and "no subscriptions were found" in plain.error(),
          "az login --identity without any role: no subscriptions found",
          plain.describe() if plain.ok else plain.error())
    accounts = mi.ok("login", "--identity", "--allow-no-subscriptions")
    require(bool(accounts) and all(a["tenantId"] == tenant for a in accounts)
            and accounts[0]["user"] == {"name": "systemAssignedIdentity", "type": "servicePrincipal",
                                        "assignedIdentityInfo": "MSI"},
            "az login --identity --allow-no-subscriptions (system-assigned, sim tenant)",
            json.dumps(accounts))
    check(sub not in [a["id"] for a in accounts],
          "the identity without a role is not shown the sim subscription", json.dumps(accounts))
    groups = mi("group", "list", label="group-list-no-role")
    denied = not groups.ok and any(w in groups.error() for w in
                                   ("AuthorizationFailed", "SubscriptionNotFound", "not authorized",
                                    "does not have authorization", "could not be found"))
    check(denied or (groups.ok and groups.json() == []),
          "az group list without a role: empty list or a clear authorization error",
          groups.describe() if not groups.ok else groups.stdout[:500])

    # The admin (second AZURE_CONFIG_DIR) grants the VM's principal Reader on the subscription.
    vm_show = admin("vm", "show", "-g", "demo-rg", "-n", "demo-vm",
                    "--query", "identity.principalId", "-o", "tsv", label="vm-show")
    vm_principal = vm_show.stdout.strip() if vm_show.ok else ""
    check(bool(vm_principal), "az vm show -g demo-rg -n demo-vm gives identity.principalId",
          vm_show.describe())
    if not vm_principal:
        vm = admin.ok("rest", "--method", "get",
                      "--url", f"{conn['arm']}{conn['demo_vm']['id']}?api-version=2024-07-01",
                      label="rest-vm-get")
        vm_principal = (vm.get("identity") or {}).get("principalId")
        require(bool(vm_principal), "az rest GET demo-vm gives identity.principalId", json.dumps(vm))
    print(f"  demo-vm principal {vm_principal}", flush=True)
    admin.ok("role", "assignment", "create", "--assignee-object-id", vm_principal,
             "--assignee-principal-type", "ServicePrincipal", "--role", "Reader",
             "--scope", f"/subscriptions/{sub}")

    accounts = mi.ok("login", "--identity", label="login-identity-reader")
    require(sub in [a["id"] for a in accounts],
            "az login --identity with Reader lists the sim subscription", json.dumps(accounts))
    groups = mi.ok("group", "list", label="group-list-reader")
    names = sorted(g["name"] for g in groups)
    check({"demo-rg", "rg-az"} <= set(names),
          "az group list as the VM identity lists demo-rg and rg-az", json.dumps(names))
    # Reader cannot write.
    denied = mi("group", "create", "-n", "rg-mi", "-l", "eastus", label="group-create-as-reader")
    check(not denied.ok and "AuthorizationFailed" in denied.error(),
          "az group create as a Reader is refused with AuthorizationFailed",
          denied.describe() if not denied.ok else denied.stdout[:500])

    print("f. clean up", flush=True)
    admin.ok("identity", "delete", "-g", "rg-az", "-n", "id-az")
    listed = admin.ok("identity", "list", "-g", "rg-az", label="identity-list-after-delete")
    check(listed == [], "az identity delete: id-az is gone", json.dumps(listed))
    admin.ok("group", "delete", "-n", "rg-az", "--yes")
    exists = admin("group", "exists", "-n", "rg-az", label="group-exists-after-delete")
    check(exists.ok and exists.stdout.strip() == "false",
          "az group delete: rg-az no longer exists", exists.describe() if not exists.ok else exists.stdout)


def main():
    workdir = Path(tempfile.mkdtemp(prefix="misim-az-"))
    (workdir / "logs").mkdir()
    misim = Misim(workdir)

    def on_signal(signum, _frame):
        raise StepFailed(f"interrupted by {signal.Signals(signum).name} "
                         f"(AZ_SUITE_TIMEOUT expired, or stopped by hand)")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    started = time.monotonic()
    try:
        scenario(workdir, misim)
    except StepFailed as ex:
        if not ex.recorded:
            results.bad(str(ex))
        print(f"stopped after: {ex}", flush=True)
    except Exception:  # an unexpected answer (say, JSON without a field): report, never pass
        import traceback
        results.bad("unexpected error:\n" + traceback.format_exc())
    finally:
        misim.stop()

    elapsed = time.monotonic() - started
    if results.failed:
        print(f"\n{len(results.failed)} check(s) failed:")
        for what in results.failed:
            print(f"  - {what}")
        print(f"work dir kept (az --debug logs in {workdir / 'logs'})")
    elif os.environ.get("KEEP_WORKDIR"):
        print(f"work dir kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"az interop ({elapsed:.0f} s):")
    print(f"az: {results.passed} passed, {len(results.failed)} failed")
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
