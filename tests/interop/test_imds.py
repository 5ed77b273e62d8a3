"""misim's IMDS (the demo VM's managed identity endpoint) driven by the official clients.

azure-identity's ManagedIdentityCredential / DefaultAzureCredential and MSAL's
ManagedIdentityClient are pointed at the demo VM's IMDS listener with
AZURE_POD_IDENTITY_AUTHORITY_HOST (set per test, before any client exists, and
removed afterwards). Every token is checked against the JWKS of the simulator's
Entra ID; a user-assigned identity is attached to the demo VM through ARM, and
the VM identity's token is used with azure-mgmt-resource against ARM's RBAC.

These tests run against `sim_demo`, a simulator started with the demo VM, so
the suite's other simulator (`sim`, --no-demo) never sees the VM's principal.
"""

from __future__ import annotations

import time
import uuid

import jwt
import msal
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.identity import (
    ClientAssertionCredential,
    ClientSecretCredential,
    CredentialUnavailableError,
    DefaultAzureCredential,
    ManagedIdentityCredential,
)
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.authorization.v2022_04_01.models import RoleAssignmentCreateParameters
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.msi.models import Identity
from azure.mgmt.resource.resources import ResourceManagementClient

from conftest import ARM, GRAPH, HTTP_TIMEOUT_S, REFUSED, UUID_RE, Graph, cca

ARM_SCOPE = f"{ARM}/.default"
ARM_SCOPES = [ARM_SCOPE]
DEMO_RG = "demo-rg"
LOCATION = "eastus"
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
VM_API = "2024-11-01"
IMDS_TOKEN = "/metadata/identity/oauth2/token"
MI_LIFETIME_S = 24 * 3600  # Azure: managed identity tokens live about 24 hours


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def mirid(resource_id: str) -> str:
    """xms_mirid spells the resource id with a lower-case `resourcegroups` segment."""
    head, sep, tail = resource_id.partition("/resourceGroups/")
    if not sep:
        head, sep, tail = resource_id.partition("/resourcegroups/")
    assert sep, resource_id
    return f"{head}/resourcegroups/{tail}"


# --------------------------------------------------------------------------
# Per-test environment: IMDS redirected to the demo VM, loopback only.
# --------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def imds_host(sim_demo, monkeypatch):
    """Point every managed identity client at the demo VM's IMDS (never 169.254.169.254).

    The guard in conftest refuses non-loopback traffic, but azure-identity turns
    any exception into CredentialUnavailableError, so also check afterwards that
    nothing was refused during the test.
    """
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", sim_demo["imds"])
    start = len(REFUSED)
    yield sim_demo["imds"]
    assert REFUSED[start:] == [], f"a client tried to leave loopback: {REFUSED[start:]}"


# --------------------------------------------------------------------------
# The demo simulator's admin side (ARM, Graph) and token verification.
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_authority(sim_demo) -> str:
    return f"{sim_demo['aad']}/{sim_demo['tenant_id']}"


@pytest.fixture(scope="module")
def admin_token(sim_demo, demo_authority) -> str:
    admin = sim_demo["admin"]
    result = cca(demo_authority, admin["client_id"], admin["client_secret"]).acquire_token_for_client(scopes=ARM_SCOPES)
    assert "access_token" in result, result
    return result["access_token"]


@pytest.fixture(scope="module")
def demo_graph(sim_demo, demo_authority) -> Graph:
    admin = sim_demo["admin"]
    result = cca(demo_authority, admin["client_id"], admin["client_secret"]).acquire_token_for_client(
        scopes=[f"{GRAPH}/.default"]
    )
    assert "access_token" in result, result
    return Graph(sim_demo["graph"], result["access_token"])


class Arm:
    """Raw ARM calls with the admin's token (for the VM, which has no SDK here)."""

    def __init__(self, base: str, token: str):
        self.base = base
        self.token = token

    def call(self, method: str, path: str, api_version: str, body=None) -> requests.Response:
        r = requests.request(
            method,
            self.base + path,
            params={"api-version": api_version},
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=HTTP_TIMEOUT_S,
        )
        assert r.status_code < 500, f"{method} {path}: {r.status_code} {r.text}"
        return r


@pytest.fixture(scope="module")
def arm(sim_demo, admin_token) -> Arm:
    return Arm(sim_demo["arm"], admin_token)


def _sdk_kwargs(sim_demo, **extra) -> dict:
    return dict(
        base_url=sim_demo["arm"],
        credential_scopes=ARM_SCOPES,
        retry_total=0,
        connection_timeout=HTTP_TIMEOUT_S,
        read_timeout=HTTP_TIMEOUT_S,
        **extra,
    )


@pytest.fixture(scope="module")
def admin_credential(sim_demo):
    admin = sim_demo["admin"]
    credential = ClientSecretCredential(
        sim_demo["tenant_id"],
        admin["client_id"],
        admin["client_secret"],
        authority=sim_demo["aad"],
        disable_instance_discovery=True,
        connection_timeout=HTTP_TIMEOUT_S,
        read_timeout=HTTP_TIMEOUT_S,
    )
    yield credential
    credential.close()


@pytest.fixture(scope="module")
def admin_msi(sim_demo, admin_credential):
    with ManagedServiceIdentityClient(admin_credential, sim_demo["subscription_id"], **_sdk_kwargs(sim_demo)) as client:
        yield client


@pytest.fixture(scope="module")
def admin_authorization(sim_demo, admin_credential):
    with AuthorizationManagementClient(admin_credential, sim_demo["subscription_id"], **_sdk_kwargs(sim_demo)) as client:
        yield client


@pytest.fixture(scope="module")
def demo_vm(sim_demo, arm) -> dict:
    """The demo VM as ARM returns it; its system-assigned identity's principalId."""
    vm_id = sim_demo["demo_vm"]["id"]
    r = arm.call("GET", vm_id, VM_API)
    assert r.status_code == 200, r.text
    vm = r.json()
    assert vm["id"].lower() == vm_id.lower(), vm
    assert vm["name"] == "demo-vm" and vm["type"] == "Microsoft.Compute/virtualMachines", vm
    identity = vm["identity"]
    assert "SystemAssigned" in identity["type"], identity
    assert UUID_RE.match(identity["principalId"]), identity
    assert identity["tenantId"] == sim_demo["tenant_id"], identity
    return vm


@pytest.fixture(scope="module")
def verify_mi(sim_demo, demo_authority):
    """Check a managed identity access token against the demo simulator's published keys."""
    r = requests.get(f"{demo_authority}/.well-known/openid-configuration", timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    issuer = r.json()["issuer"]
    assert issuer == f"{demo_authority}/", issuer  # v1 tokens carry the v1 issuer
    r = requests.get(r.json()["jwks_uri"], timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    jwks = r.json()
    keyset = jwt.PyJWKSet.from_dict(jwks)

    def check(token: str, *, oid: str, mir_id: str, appid: str | None = None, resource: str = ARM) -> dict:
        header = jwt.get_unverified_header(token)
        assert header["alg"] == "RS256" and header.get("typ") == "JWT", header
        signing = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
        assert signing, f"token kid {header['kid']} is not in the JWKS"
        claims = jwt.decode(
            token,
            key=keyset[header["kid"]].key,
            algorithms=["RS256"],
            audience=resource,
            issuer=issuer,
            options={"require": ["exp", "iat", "nbf", "iss", "aud"]},
        )
        assert claims["aud"] == resource, claims
        assert claims["tid"] == sim_demo["tenant_id"], claims
        assert claims["ver"] == "1.0" and claims["idtyp"] == "app", claims
        assert claims["oid"] == oid, claims
        assert claims["sub"] == oid, claims
        assert UUID_RE.match(claims["appid"]), claims
        if appid is not None:
            assert claims["appid"] == appid, claims
        assert claims["appidacr"] == "2", claims  # managed identities authenticate with a certificate
        assert claims["xms_mirid"] == mir_id, claims
        now = time.time()
        assert claims["nbf"] <= now + 5 and claims["iat"] <= now + 5, claims
        assert MI_LIFETIME_S - 3600 < claims["exp"] - now <= MI_LIFETIME_S + 60, claims
        return claims

    return check


def _imds_get(imds: str, path: str, params: dict, metadata: bool = True) -> requests.Response:
    headers = {"Metadata": "true"} if metadata else {}
    return requests.get(imds + path, params=params, headers=headers, timeout=HTTP_TIMEOUT_S)


# --------------------------------------------------------------------------
# A user-assigned identity attached to the demo VM (and detached afterwards).
# --------------------------------------------------------------------------
def _patch_vm_identity(arm: Arm, vm_id: str, identity: dict) -> dict:
    r = arm.call("PATCH", vm_id, VM_API, {"identity": identity})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def uami_on_vm(sim_demo, arm, admin_msi, demo_vm):
    name = unique("interop-uami")
    created = admin_msi.user_assigned_identities.create_or_update(DEMO_RG, name, Identity(location=LOCATION))
    for value in (created.client_id, created.principal_id):
        assert UUID_RE.match(value), created.as_dict()
    vm_id = sim_demo["demo_vm"]["id"]
    try:
        vm = _patch_vm_identity(arm, vm_id, {
            "type": "SystemAssigned, UserAssigned",
            "userAssignedIdentities": {created.id: {}},
        })
        identity = vm["identity"]
        assert identity["type"] == "SystemAssigned, UserAssigned", identity
        # The system-assigned identity is kept as it was.
        assert identity["principalId"] == demo_vm["identity"]["principalId"], identity
        attached = {k.lower(): v for k, v in identity["userAssignedIdentities"].items()}
        assert attached[created.id.lower()] == {"clientId": created.client_id, "principalId": created.principal_id}, identity
        yield created
    finally:
        vm = _patch_vm_identity(arm, vm_id, {"type": "SystemAssigned"})
        assert vm["identity"]["type"] == "SystemAssigned", vm["identity"]
        assert vm["identity"]["principalId"] == demo_vm["identity"]["principalId"], vm["identity"]
        admin_msi.user_assigned_identities.delete(DEMO_RG, name)


# --------------------------------------------------------------------------
# 1. System-assigned identity through azure-identity
# --------------------------------------------------------------------------
def test_managed_identity_credential_system_assigned(sim_demo, demo_vm, demo_graph, verify_mi):
    principal_id = demo_vm["identity"]["principalId"]
    with ManagedIdentityCredential() as credential:
        token = credential.get_token(ARM_SCOPE)
        claims = verify_mi(token.token, oid=principal_id, mir_id=mirid(sim_demo["demo_vm"]["id"]))
        assert abs(token.expires_on - claims["exp"]) <= 60, (token.expires_on, claims["exp"])
        # The credential keeps it: asking again returns the same token.
        assert credential.get_token(ARM_SCOPE).token == token.token

    # The token's appid is the client id of the VM identity's service principal.
    r = demo_graph.call("GET", f"/servicePrincipals/{principal_id}")
    assert r.status_code == 200, r.text
    sp = r.json()
    assert sp["appId"] == claims["appid"], sp
    assert sp["servicePrincipalType"] == "ManagedIdentity", sp
    assert sim_demo["demo_vm"]["id"].lower() in [n.lower() for n in sp.get("alternativeNames", [])], sp


def test_raw_imds_token_response(sim_demo, demo_vm, verify_mi, imds_host):
    """The wire format the clients parse: every field a string, as on Azure."""
    r = _imds_get(imds_host, IMDS_TOKEN, {"api-version": "2018-02-01", "resource": ARM})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    body = r.json()
    for field in ("access_token", "client_id", "expires_in", "expires_on", "ext_expires_in",
                  "not_before", "resource", "token_type"):
        assert isinstance(body[field], str), (field, body)
    assert body["token_type"] == "Bearer" and body["resource"] == ARM, body
    claims = verify_mi(body["access_token"], oid=demo_vm["identity"]["principalId"],
                       mir_id=mirid(sim_demo["demo_vm"]["id"]), appid=body["client_id"])
    assert int(body["expires_on"]) == claims["exp"], (body, claims["exp"])
    assert int(body["not_before"]) == claims["nbf"], (body, claims["nbf"])
    # expires_in counts from now (IMDS may hand out a cached token).
    assert abs(time.time() + int(body["expires_in"]) - int(body["expires_on"])) <= 5, body

    # api-version 2019-08-01 and a resource with a trailing slash: aud echoes it.
    r = _imds_get(imds_host, IMDS_TOKEN, {"api-version": "2019-08-01", "resource": f"{ARM}/"})
    assert r.status_code == 200, r.text
    assert r.json()["resource"] == f"{ARM}/"
    verify_mi(r.json()["access_token"], oid=demo_vm["identity"]["principalId"],
              mir_id=mirid(sim_demo["demo_vm"]["id"]), resource=f"{ARM}/")


# --------------------------------------------------------------------------
# 2. User-assigned identity, selected by client id, object id and resource id
# --------------------------------------------------------------------------
def test_managed_identity_credential_user_assigned(sim_demo, arm, demo_vm, uami_on_vm, verify_mi):
    uami = uami_on_vm
    expected_mirid = mirid(uami.id)
    selectors = {
        "client_id": dict(client_id=uami.client_id),
        "object_id": dict(identity_config={"object_id": uami.principal_id}),
        "resource_id": dict(identity_config={"resource_id": uami.id}),
    }
    for selector, kwargs in selectors.items():
        with ManagedIdentityCredential(**kwargs) as credential:
            token = credential.get_token(ARM_SCOPE)
        claims = verify_mi(token.token, oid=uami.principal_id, appid=uami.client_id, mir_id=expected_mirid)
        assert claims["oid"] != demo_vm["identity"]["principalId"], selector

    # With a user-assigned identity attached, no selector still means the system-assigned one.
    with ManagedIdentityCredential() as credential:
        token = credential.get_token(ARM_SCOPE)
    verify_mi(token.token, oid=demo_vm["identity"]["principalId"], mir_id=mirid(sim_demo["demo_vm"]["id"]))

    # Detached from the VM, the identity is gone from its IMDS (no token from a cache either).
    _patch_vm_identity(arm, sim_demo["demo_vm"]["id"], {"type": "SystemAssigned"})
    with ManagedIdentityCredential(client_id=uami.client_id) as credential:
        with pytest.raises(CredentialUnavailableError) as excinfo:
            credential.get_token(ARM_SCOPE)
    assert "Identity not found" in str(excinfo.value), str(excinfo.value)


# --------------------------------------------------------------------------
# 3. DefaultAzureCredential narrowed down to managed identity
# --------------------------------------------------------------------------
def test_default_azure_credential_managed_identity_only(sim_demo, demo_vm, verify_mi):
    credential = DefaultAzureCredential(
        exclude_environment_credential=True,
        exclude_workload_identity_credential=True,
        exclude_shared_token_cache_credential=True,
        exclude_visual_studio_code_credential=True,
        exclude_cli_credential=True,
        exclude_powershell_credential=True,
        exclude_developer_cli_credential=True,
        exclude_interactive_browser_credential=True,
        exclude_broker_credential=True,
    )
    with credential:
        assert [type(c).__name__ for c in credential.credentials] == ["ManagedIdentityCredential"]
        token = credential.get_token(ARM_SCOPE)
    verify_mi(token.token, oid=demo_vm["identity"]["principalId"], mir_id=mirid(sim_demo["demo_vm"]["id"]))


# --------------------------------------------------------------------------
# 4. MSAL's ManagedIdentityClient
# --------------------------------------------------------------------------
def test_msal_managed_identity_client(sim_demo, demo_vm, verify_mi):
    with requests.Session() as session:
        client = msal.ManagedIdentityClient(msal.SystemAssignedManagedIdentity(), http_client=session)
        first = client.acquire_token_for_client(resource=ARM)
        assert "access_token" in first, first
        assert first["token_type"] == "Bearer", first
        assert first.get("token_source") == "identity_provider", first
        assert MI_LIFETIME_S - 3600 < first["expires_in"] <= MI_LIFETIME_S, first
        verify_mi(first["access_token"], oid=demo_vm["identity"]["principalId"], mir_id=mirid(sim_demo["demo_vm"]["id"]))

        second = client.acquire_token_for_client(resource=ARM)
        assert second.get("token_source") == "cache", second
        assert second["access_token"] == first["access_token"]


# --------------------------------------------------------------------------
# 5. End to end: the VM identity's token against ARM's RBAC
# --------------------------------------------------------------------------
def test_vm_identity_with_azure_mgmt_resource_and_rbac(sim_demo, demo_vm, admin_authorization):
    principal_id = demo_vm["identity"]["principalId"]
    sub = sim_demo["subscription_id"]
    rg_scope = f"/subscriptions/{sub}/resourceGroups/{DEMO_RG}"
    seen: list[tuple[int, str, str | None]] = []

    def record(response):
        http = response.http_response
        seen.append((http.status_code, http.request.method, http.request.headers.get("Authorization")))

    credential = ManagedIdentityCredential()
    client = ResourceManagementClient(credential, sub, **_sdk_kwargs(sim_demo, raw_response_hook=record))
    assignments = admin_authorization.role_assignments
    assignment_name = str(uuid.uuid4())
    try:
        # No role yet: ARM refuses the VM identity.
        with pytest.raises(HttpResponseError) as excinfo:
            client.resource_groups.get(DEMO_RG)
        assert excinfo.value.status_code == 403, excinfo.value
        assert excinfo.value.error is not None and excinfo.value.error.code == "AuthorizationFailed", excinfo.value
        message = excinfo.value.error.message
        assert principal_id in message, message
        assert "Microsoft.Resources/subscriptions/resourceGroups/read" in message, message

        # The admin makes the VM identity a Reader of the group.
        created = assignments.create(
            rg_scope,
            assignment_name,
            RoleAssignmentCreateParameters(
                role_definition_id=f"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{READER}",
                principal_id=principal_id,
                principal_type="ServicePrincipal",
            ),
        )
        assert created.principal_id == principal_id

        # The same credential (and the same token: it carries no roles) now reads the group.
        group = client.resource_groups.get(DEMO_RG)
        assert group.id == rg_scope and group.name == DEMO_RG

        assert [status for status, _, _ in seen] == [403, 200], seen
        tokens = {auth for _, _, auth in seen}
        assert len(tokens) == 1 and next(iter(tokens)).startswith("Bearer "), "one token for both requests"

        # Without the assignment the same token is refused again.
        assignments.delete(rg_scope, assignment_name)
        assignment_name = None
        with pytest.raises(HttpResponseError) as excinfo:
            client.resource_groups.get(DEMO_RG)
        assert excinfo.value.status_code == 403
        assert excinfo.value.error.code == "AuthorizationFailed"
    finally:
        if assignment_name is not None:
            assignments.delete(rg_scope, assignment_name)
        client.close()
        credential.close()
    assert all(status < 500 for status, _, _ in seen), seen


# --------------------------------------------------------------------------
# 5b. A user-assigned identity as an application's federated credential (spec §6.3)
# --------------------------------------------------------------------------
EXCHANGE = "api://AzureADTokenExchange"


def test_user_assigned_identity_as_an_applications_credential(sim_demo, demo_graph, demo_vm, uami_on_vm):
    """Microsoft's documented pattern: the VM's identity gets a token for AAD Token Exchange
    from IMDS (ManagedIdentityCredential), and ClientAssertionCredential presents it as the
    application's assertion; the application's federated credential trusts the identity."""
    uami = uami_on_vm
    app = demo_graph.create_application(unique("interop-trusts-mi"))
    sp = demo_graph.create_service_principal(app["appId"])
    issuer = f"{sim_demo['aad']}/{sim_demo['tenant_id']}/v2.0"
    credentials = f"/applications/{app['id']}/federatedIdentityCredentials"

    def trust(name: str, subject: str) -> None:
        r = demo_graph.call("POST", credentials, {"name": name, "issuer": issuer, "subject": subject,
                                                  "audiences": [EXCHANGE]})
        assert r.status_code == 201, r.text

    def app_credential(identity: ManagedIdentityCredential) -> ClientAssertionCredential:
        return ClientAssertionCredential(
            sim_demo["tenant_id"], app["appId"], lambda: identity.get_token(f"{EXCHANGE}/.default").token,
            authority=sim_demo["aad"], connection_timeout=HTTP_TIMEOUT_S, read_timeout=HTTP_TIMEOUT_S)

    try:
        trust("vm-identity", uami.principal_id)
        with ManagedIdentityCredential(client_id=uami.client_id) as identity:
            exchange = jwt.decode(identity.get_token(f"{EXCHANGE}/.default").token, options={"verify_signature": False})
            assert (exchange["iss"], exchange["aud"], exchange["sub"]) == (issuer, EXCHANGE, uami.principal_id), exchange
            token = app_credential(identity).get_token(ARM_SCOPE)
        claims = jwt.decode(token.token, options={"verify_signature": False})
        assert (claims["appid"], claims["oid"]) == (app["appId"], sp["id"]), claims

        # Only a user-assigned identity's token stands in for an application.
        trust("system-identity", demo_vm["identity"]["principalId"])
        with ManagedIdentityCredential() as system:
            with pytest.raises(ClientAuthenticationError) as excinfo:
                app_credential(system).get_token(ARM_SCOPE)
        assert "AADSTS700236" in str(excinfo.value), str(excinfo.value)
    finally:
        assert demo_graph.call("DELETE", f"/applications/{app['id']}").status_code == 204


# --------------------------------------------------------------------------
# 6. Error paths
# --------------------------------------------------------------------------
def test_unknown_user_assigned_identity_is_unavailable(demo_vm, imds_host):
    unknown = str(uuid.uuid4())
    with ManagedIdentityCredential(client_id=unknown) as credential:
        with pytest.raises(CredentialUnavailableError) as excinfo:
            credential.get_token(ARM_SCOPE)
    # The client saw IMDS's answer (not a connection failure).
    assert "Identity not found" in str(excinfo.value), str(excinfo.value)

    r = _imds_get(imds_host, IMDS_TOKEN, {"api-version": "2018-02-01", "resource": ARM, "client_id": unknown})
    assert r.status_code == 400, r.text
    assert r.json() == {"error": "invalid_request", "error_description": "Identity not found"}


def test_missing_metadata_header_is_refused(demo_vm, imds_host):
    unknown = str(uuid.uuid4())
    for params in (
        {"api-version": "2018-02-01", "resource": ARM},
        {"api-version": "2018-02-01", "resource": ARM, "client_id": unknown},
    ):
        r = _imds_get(imds_host, IMDS_TOKEN, params, metadata=False)
        assert r.status_code == 400, r.text
        assert "Identity not found" not in r.text, r.text
        body = r.json()
        assert body["error"] == "invalid_request", body
        assert "access_token" not in body, body
