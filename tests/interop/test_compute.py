"""misim's Microsoft.Compute/virtualMachines driven by azure-mgmt-compute.

ComputeManagementClient (pinned in requirements.txt; it sends api-version
2026-04-01) is pointed at the simulator with `base_url` and authenticated with
the admin's ClientSecretCredential, as in test_arm.py. The tests cover the VM
lifecycle with system- and user-assigned identities: the system identity's
service principal appears in (and disappears from) Graph, user-assigned
identities are merged and removed by PATCH, and attaching a user-assigned
identity needs Microsoft.ManagedIdentity/userAssignedIdentities/assign/action
(LinkedAuthorizationFailed without it).

Request bodies are plain dicts, which azure-mgmt-compute 39 (a TypeSpec-generated
client) sends as they are: they must use the REST (camelCase) names of
azure.mgmt.compute.types, and a None value goes on the wire as JSON null.

Every response an SDK client receives is recorded (with its request body); a
test fails if misim ever answered with a 5xx.
"""

from __future__ import annotations

import json
import uuid

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.identity import ClientSecretCredential
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.authorization.v2022_04_01.models import RoleAssignmentCreateParameters
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.msi.models import Identity
from azure.mgmt.resource.resources import ResourceManagementClient
from azure.mgmt.resource.resources.models import ResourceGroup

from conftest import ARM, HTTP_TIMEOUT_S, UUID_RE

ARM_SCOPES = [f"{ARM}/.default"]
LOCATION = "eastus"
VM_TYPE = "Microsoft.Compute/virtualMachines"
VM_SIZE = "Standard_B1s"
BOTH = "SystemAssigned, UserAssigned"
VIRTUAL_MACHINE_CONTRIBUTOR = "9980e02c-c2be-4d73-94e8-173b1dc7cf3c"
MANAGED_IDENTITY_OPERATOR = "f1a07417-d97a-45cb-824c-7a7467783830"

# (status, method, url, request body) of every response any SDK client of this module received.
_SEEN: list[tuple[int, str, str, object]] = []


def _record(response) -> None:
    http = response.http_response
    request = http.request
    body = getattr(request, "content", None)
    if body is None:
        body = getattr(request, "body", None)
    _SEEN.append((http.status_code, request.method, request.url, body))


@pytest.fixture(autouse=True)
def no_server_errors():
    """misim must never answer an SDK request with a 5xx."""
    start = len(_SEEN)
    yield
    errors = [seen[:3] for seen in _SEEN[start:] if seen[0] >= 500]
    assert not errors, f"misim answered with server errors: {errors}"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def error_code(exc: HttpResponseError) -> str | None:
    return exc.error.code if exc.error is not None else None


def _json_body(body) -> dict:
    if isinstance(body, (bytes, bytearray)):
        body = body.decode()
    return json.loads(body)


# --------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------
def _credential(sim, client_id: str, secret: str) -> ClientSecretCredential:
    return ClientSecretCredential(
        sim["tenant_id"],
        client_id,
        secret,
        authority=sim["aad"],
        disable_instance_discovery=True,
        connection_timeout=HTTP_TIMEOUT_S,
        read_timeout=HTTP_TIMEOUT_S,
    )


def _client_kwargs(sim) -> dict:
    return dict(
        base_url=sim["arm"],
        credential_scopes=ARM_SCOPES,
        polling_interval=0,
        retry_total=0,
        connection_timeout=HTTP_TIMEOUT_S,
        read_timeout=HTTP_TIMEOUT_S,
        raw_response_hook=_record,
    )


class Clients:
    def __init__(self, sim, credential):
        kwargs = _client_kwargs(sim)
        sub = sim["subscription_id"]
        self.credential = credential
        self.compute = ComputeManagementClient(credential, sub, **kwargs)
        self.resources = ResourceManagementClient(credential, sub, **kwargs)
        self.msi = ManagedServiceIdentityClient(credential, sub, **kwargs)
        self.authorization = AuthorizationManagementClient(credential, sub, **kwargs)

    def close(self):
        for client in (self.compute, self.resources, self.msi, self.authorization):
            client.close()
        self.credential.close()


@pytest.fixture(scope="module")
def admin(sim):
    clients = Clients(sim, _credential(sim, sim["admin"]["client_id"], sim["admin"]["client_secret"]))
    yield clients
    clients.close()


@pytest.fixture
def resource_group(admin):
    name = unique("interop-vm-rg")
    group = admin.resources.resource_groups.create_or_update(name, ResourceGroup(location=LOCATION))
    assert group.name == name
    yield group
    if admin.resources.resource_groups.check_existence(name):
        admin.resources.resource_groups.begin_delete(name).result()


def role_definition_id(sim, guid: str) -> str:
    return f"/subscriptions/{sim['subscription_id']}/providers/Microsoft.Authorization/roleDefinitions/{guid}"


def assign_role(admin, sim, scope: str, guid: str, principal_id: str) -> None:
    admin.authorization.role_assignments.create(
        scope,
        str(uuid.uuid4()),
        RoleAssignmentCreateParameters(
            role_definition_id=role_definition_id(sim, guid), principal_id=principal_id, principal_type="ServicePrincipal"
        ),
    )


def create_uami(admin, rg: str):
    created = admin.msi.user_assigned_identities.create_or_update(rg, unique("interop-id"), Identity(location=LOCATION))
    assert UUID_RE.match(created.principal_id) and UUID_RE.match(created.client_id), created.as_dict()
    return created


def uami_entry(vm, uami_id: str):
    """The VM's entry for a user-assigned identity (ARM ids compare case-insensitively)."""
    entries = {k.lower(): v for k, v in (vm.identity.user_assigned_identities or {}).items()}
    return entries.get(uami_id.lower())


def uami_keys(vm) -> set[str]:
    return {k.lower() for k in (vm.identity.user_assigned_identities or {})}


def graph_sp_status(graph, principal_id: str) -> int:
    return graph.call("GET", f"/servicePrincipals/{principal_id}").status_code


def assert_managed_identity_sp(graph, principal_id: str) -> dict:
    r = graph.call("GET", f"/servicePrincipals/{principal_id}")
    assert r.status_code == 200, r.text
    sp = r.json()
    assert sp["id"] == principal_id, sp
    assert sp["servicePrincipalType"] == "ManagedIdentity", sp
    return sp


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------
def test_vm_identity_lifecycle(sim, admin, graph, resource_group):
    rg = resource_group.name
    vms = admin.compute.virtual_machines
    uami = create_uami(admin, rg)
    uami2 = create_uami(admin, rg)
    expected_id = f"{resource_group.id}/providers/{VM_TYPE}/vm1"

    # 1. Create with both identity kinds.
    start = len(_SEEN)
    vm = vms.begin_create_or_update(
        rg,
        "vm1",
        {
            "location": LOCATION,
            "identity": {"type": BOTH, "userAssignedIdentities": {uami.id: {}}},
            "hardwareProfile": {"vmSize": VM_SIZE},
        },
    ).result()
    put = [s for s in _SEEN[start:] if s[1] == "PUT"]
    assert put and put[0][0] in (200, 201), _SEEN[start:]
    assert "api-version=2026-04-01" in put[0][2], put[0][2]
    assert vm.id.lower() == expected_id.lower(), vm.id
    assert vm.name == "vm1"
    assert vm.type == VM_TYPE
    assert vm.location == LOCATION
    assert vm.provisioning_state == "Succeeded"
    assert vm.vm_id and UUID_RE.match(vm.vm_id), vm.vm_id
    assert vm.identity.type == BOTH
    assert vm.identity.principal_id and UUID_RE.match(vm.identity.principal_id), vm.identity
    assert vm.identity.tenant_id == sim["tenant_id"]
    assert uami_keys(vm) == {uami.id.lower()}
    entry = uami_entry(vm, uami.id)
    assert entry.principal_id == uami.principal_id
    assert entry.client_id == uami.client_id
    system_principal = vm.identity.principal_id
    assert system_principal != uami.principal_id
    assert_managed_identity_sp(graph, system_principal)

    # 2. PATCH merges a second user-assigned identity ...
    vm = vms.begin_update(
        rg, "vm1", {"identity": {"type": BOTH, "userAssignedIdentities": {uami2.id: {}}}}
    ).result()
    assert vm.identity.type == BOTH
    assert vm.identity.principal_id == system_principal
    assert uami_keys(vm) == {uami.id.lower(), uami2.id.lower()}
    assert uami_entry(vm, uami.id).principal_id == uami.principal_id
    assert uami_entry(vm, uami2.id).principal_id == uami2.principal_id
    assert vm.vm_id and vm.provisioning_state == "Succeeded"

    # ... and null removes one. The plain dict puts a JSON null on the wire.
    start = len(_SEEN)
    vm = vms.begin_update(rg, "vm1", {"identity": {"type": BOTH, "userAssignedIdentities": {uami.id: None}}}).result()
    patch = [s for s in _SEEN[start:] if s[1] == "PATCH"]
    assert patch and patch[0][0] == 200, _SEEN[start:]
    assert _json_body(patch[0][3]) == {"identity": {"type": BOTH, "userAssignedIdentities": {uami.id: None}}}, patch[0][3]
    assert uami_keys(vm) == {uami2.id.lower()}
    assert vm.identity.principal_id == system_principal
    assert uami_keys(vms.get(rg, "vm1")) == {uami2.id.lower()}

    # 3. Dropping the system identity deletes its service principal ...
    vm = vms.begin_update(rg, "vm1", {"identity": {"type": "UserAssigned"}}).result()
    assert vm.identity.type == "UserAssigned"
    assert vm.identity.principal_id is None, vm.identity
    assert uami_keys(vm) == {uami2.id.lower()}
    assert graph_sp_status(graph, system_principal) == 404
    # ... and re-enabling it makes a new one.
    vm = vms.begin_update(rg, "vm1", {"identity": {"type": BOTH}}).result()
    assert vm.identity.type == BOTH
    new_principal = vm.identity.principal_id
    assert new_principal and UUID_RE.match(new_principal), vm.identity
    assert new_principal != system_principal
    assert uami_keys(vm) == {uami2.id.lower()}
    assert_managed_identity_sp(graph, new_principal)
    assert graph_sp_status(graph, system_principal) == 404

    # 4. Read and list.
    fetched = vms.get(rg, "vm1")
    assert fetched.id.lower() == expected_id.lower()
    assert fetched.identity.principal_id == new_principal
    assert fetched.vm_id == vm.vm_id
    by_rg = {v.name: v for v in vms.list(rg)}
    assert list(by_rg) == ["vm1"], list(by_rg)
    assert by_rg["vm1"].vm_id == vm.vm_id
    by_sub = {v.id.lower(): v for v in vms.list_all()}
    assert expected_id.lower() in by_sub, sorted(by_sub)

    # Delete: the poller completes, the VM and its system principal are gone,
    # the user-assigned identity survives.
    start = len(_SEEN)
    poller = vms.begin_delete(rg, "vm1")
    assert poller.result() is None
    assert poller.done() and poller.status() == "Succeeded"
    delete = [s for s in _SEEN[start:] if s[1] == "DELETE"]
    assert delete and delete[0][0] in (200, 202, 204), _SEEN[start:]
    with pytest.raises(ResourceNotFoundError) as excinfo:
        vms.get(rg, "vm1")
    assert excinfo.value.status_code == 404
    assert graph_sp_status(graph, new_principal) == 404
    assert graph_sp_status(graph, uami2.principal_id) == 200
    assert [v.name for v in vms.list(rg)] == []
    assert expected_id.lower() not in {v.id.lower() for v in vms.list_all()}


def test_vm_etags_guard_writes_through_match_conditions(admin, resource_group):
    """azure-core's MatchConditions become If-Match / If-None-Match on the VM's etag."""
    rg = resource_group.name
    vms = admin.compute.virtual_machines
    body = {"location": LOCATION, "hardwareProfile": {"vmSize": VM_SIZE}}

    def refused(call) -> tuple[int, str | None]:
        with pytest.raises(HttpResponseError) as failure:
            call().result()
        error = failure.value.error
        return failure.value.status_code, error.code if error else None

    def create(name: str, condition: MatchConditions):
        return vms.begin_create_or_update(rg, name, body, match_condition=condition)

    vm = create("etag-vm", MatchConditions.IfMissing).result()
    assert vm.etag == '"1"', vm.etag
    assert refused(lambda: create("etag-vm", MatchConditions.IfMissing)) == (
        412, "PreconditionFailed"
    )

    vm = vms.begin_update(
        rg, "etag-vm", {"tags": {"v": "2"}}, etag=vm.etag,
        match_condition=MatchConditions.IfNotModified,
    ).result()
    assert vm.etag == '"2"', vm.etag
    # A writer holding the first etag loses, and the VM keeps the winner's write.
    assert refused(
        lambda: vms.begin_update(
            rg, "etag-vm", {"tags": {"v": "lost"}}, etag='"1"',
            match_condition=MatchConditions.IfNotModified,
        )
    ) == (412, "PreconditionFailed")
    assert vms.get(rg, "etag-vm").tags == {"v": "2"}

    vm = vms.begin_update(
        rg, "etag-vm", {"tags": {"v": "3"}}, match_condition=MatchConditions.IfPresent
    ).result()
    assert vm.etag == '"3"', vm.etag
    assert refused(lambda: create("no-such-vm", MatchConditions.IfPresent)) == (
        412, "PreconditionFailed"
    )
    with pytest.raises(ResourceNotFoundError):
        vms.get(rg, "no-such-vm")


def test_vm_patch_drop_system_identity_without_dictionary(sim, admin, graph, resource_group):
    rg = resource_group.name
    vms = admin.compute.virtual_machines
    uami = create_uami(admin, rg)
    vm = vms.begin_create_or_update(
        rg,
        "vm1",
        {
            "location": LOCATION,
            "identity": {"type": BOTH, "userAssignedIdentities": {uami.id: {}}},
            "hardwareProfile": {"vmSize": VM_SIZE},
        },
    ).result()
    system_principal = vm.identity.principal_id
    assert_managed_identity_sp(graph, system_principal)

    vm = vms.begin_update(rg, "vm1", {"identity": {"type": "UserAssigned"}}).result()
    assert vm.identity.type == "UserAssigned"
    assert vm.identity.principal_id is None
    assert uami_keys(vm) == {uami.id.lower()}
    assert uami_entry(vm, uami.id).principal_id == uami.principal_id
    assert graph_sp_status(graph, system_principal) == 404


def test_vm_unknown_user_assigned_identity(sim, admin, resource_group):
    rg = resource_group.name
    missing = f"{resource_group.id}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{unique('missing')}"
    with pytest.raises(HttpResponseError) as excinfo:
        admin.compute.virtual_machines.begin_create_or_update(
            rg,
            "vm-missing-id",
            {
                "location": LOCATION,
                "identity": {"type": "UserAssigned", "userAssignedIdentities": {missing: {}}},
                "hardwareProfile": {"vmSize": VM_SIZE},
            },
        ).result()
    assert excinfo.value.status_code == 400
    assert error_code(excinfo.value) == "FailedIdentityOperation"
    with pytest.raises(ResourceNotFoundError):
        admin.compute.virtual_machines.get(rg, "vm-missing-id")


def test_vm_contributor_needs_assign_action_for_user_assigned_identity(sim, admin, graph, resource_group, secret_app):
    app, sp, secret = secret_app
    rg = resource_group.name
    uami = create_uami(admin, rg)
    assign_role(admin, sim, resource_group.id, VIRTUAL_MACHINE_CONTRIBUTOR, sp["id"])

    user = Clients(sim, _credential(sim, app["appId"], secret))
    try:
        vms = user.compute.virtual_machines
        vm = vms.begin_create_or_update(
            rg,
            "vm1",
            {
                "location": LOCATION,
                "identity": {"type": "SystemAssigned"},
                "hardwareProfile": {"vmSize": VM_SIZE},
            },
        ).result()
        assert vm.identity.type == "SystemAssigned"
        assert vm.provisioning_state == "Succeeded"
        assert_managed_identity_sp(graph, vm.identity.principal_id)

        update = {"identity": {"type": BOTH, "userAssignedIdentities": {uami.id: {}}}}
        with pytest.raises(HttpResponseError) as excinfo:
            vms.begin_update(rg, "vm1", update).result()
        assert excinfo.value.status_code == 403
        assert error_code(excinfo.value) == "LinkedAuthorizationFailed"
        message = excinfo.value.error.message
        assert "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action" in message, message
        # Nothing changed.
        unchanged = vms.get(rg, "vm1")
        assert unchanged.identity.type == "SystemAssigned"
        assert not unchanged.identity.user_assigned_identities

        # Managed Identity Operator on the identity grants the assign action.
        assign_role(admin, sim, uami.id, MANAGED_IDENTITY_OPERATOR, sp["id"])
        vm = vms.begin_update(rg, "vm1", update).result()
        assert vm.identity.type == BOTH
        assert uami_keys(vm) == {uami.id.lower()}
        assert uami_entry(vm, uami.id).principal_id == uami.principal_id
        assert vm.identity.principal_id == unchanged.identity.principal_id

        vms.begin_delete(rg, "vm1").result()
        assert graph_sp_status(graph, vm.identity.principal_id) == 404
    finally:
        user.close()
