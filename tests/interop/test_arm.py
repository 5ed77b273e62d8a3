"""misim's Azure Resource Manager driven by the official Azure management SDKs.

The clients are the pinned azure-mgmt-* packages, pointed at the simulator with
`base_url`, authenticated with azure-identity's ClientSecretCredential against
misim's Entra ID. They cover resource groups, subscriptions, user-assigned
managed identities (whose service principals are checked through Graph) and
RBAC end to end: a principal without a role assignment is refused, a Reader
assignment lets it read but not write. A raw `requests` sampling checks ARM's
error envelope for bad input.

Every response an SDK client receives is recorded; a test fails if misim ever
answered with a 5xx.
"""

from __future__ import annotations

import uuid

import pytest
import requests
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.identity import ClientSecretCredential
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.authorization.v2022_04_01.models import RoleAssignmentCreateParameters
from azure.mgmt.msi import ManagedServiceIdentityClient
from azure.mgmt.msi.models import Identity, IdentityUpdate
from azure.mgmt.resource.resources import ResourceManagementClient
from azure.mgmt.resource.resources.models import ResourceGroup, ResourceGroupPatchable
from azure.mgmt.resource.subscriptions import SubscriptionClient

from conftest import ARM, HTTP_TIMEOUT_S, UUID_RE, cca

ARM_SCOPES = [f"{ARM}/.default"]
LOCATION = "westeurope"
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"  # Azure's built-in role GUIDs
CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
MSI_TYPE = "Microsoft.ManagedIdentity/userAssignedIdentities"
MSI_API = "2024-11-30"
RESOURCES_API = "2025-04-01"

# Status codes of every response any SDK client of this module received.
_SEEN: list[tuple[int, str, str]] = []


def _record(response) -> None:
    http = response.http_response
    _SEEN.append((http.status_code, http.request.method, http.request.url))


@pytest.fixture(autouse=True)
def no_server_errors():
    """misim must never answer an SDK request with a 5xx."""
    start = len(_SEEN)
    yield
    errors = [seen for seen in _SEEN[start:] if seen[0] >= 500]
    assert not errors, f"misim answered with server errors: {errors}"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def with_status(pipeline_response, deserialized, _headers):
    """`cls=` hook: keep the HTTP status next to the model."""
    return pipeline_response.http_response.status_code, deserialized


def error_code(exc: HttpResponseError) -> str | None:
    return exc.error.code if exc.error is not None else None


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
        retry_total=0,  # surface any error at once instead of backing off
        connection_timeout=HTTP_TIMEOUT_S,
        read_timeout=HTTP_TIMEOUT_S,
        raw_response_hook=_record,
    )


class ArmClients:
    """The four management clients for one credential."""

    def __init__(self, sim, credential):
        kwargs = _client_kwargs(sim)
        sub = sim["subscription_id"]
        self.credential = credential
        self.resources = ResourceManagementClient(credential, sub, **kwargs)
        self.subscriptions = SubscriptionClient(credential, **kwargs)
        self.msi = ManagedServiceIdentityClient(credential, sub, **kwargs)
        self.authorization = AuthorizationManagementClient(credential, sub, **kwargs)

    def close(self):
        for client in (self.resources, self.subscriptions, self.msi, self.authorization):
            client.close()
        self.credential.close()


@pytest.fixture(scope="module")
def admin(sim):
    clients = ArmClients(sim, _credential(sim, sim["admin"]["client_id"], sim["admin"]["client_secret"]))
    yield clients
    clients.close()


@pytest.fixture(scope="module")
def admin_arm_token(sim, authority):
    admin = sim["admin"]
    result = cca(authority, admin["client_id"], admin["client_secret"]).acquire_token_for_client(scopes=ARM_SCOPES)
    assert "access_token" in result, result
    return result["access_token"]


@pytest.fixture
def resource_group(admin):
    """A fresh resource group, deleted afterwards if the test left it."""
    name = unique("interop-rg")
    group = admin.resources.resource_groups.create_or_update(name, ResourceGroup(location=LOCATION))
    assert group.name == name
    yield group
    if admin.resources.resource_groups.check_existence(name):
        admin.resources.resource_groups.begin_delete(name).result()


def sub_scope(sim) -> str:
    return f"/subscriptions/{sim['subscription_id']}"


def role_definition_id(sim, guid: str) -> str:
    return f"{sub_scope(sim)}/providers/Microsoft.Authorization/roleDefinitions/{guid}"


def identity_id(sim, rg: str, name: str) -> str:
    return f"{sub_scope(sim)}/resourceGroups/{rg}/providers/{MSI_TYPE}/{name}"


def assert_same_id(actual: str, expected: str) -> None:
    """ARM resource ids compare case-insensitively (MSI spells `resourcegroups`)."""
    assert actual.lower() == expected.lower(), (actual, expected)


# --------------------------------------------------------------------------
# Resource groups and subscriptions
# --------------------------------------------------------------------------
def test_resource_group_lifecycle(sim, admin):
    groups = admin.resources.resource_groups
    name = unique("interop-rg")
    expected_id = f"{sub_scope(sim)}/resourceGroups/{name}"

    assert groups.check_existence(name) is False
    status, created = groups.create_or_update(
        name, ResourceGroup(location=LOCATION, tags={"purpose": "interop"}), cls=with_status
    )
    assert status == 201
    assert created.id == expected_id
    assert created.name == name
    assert created.type == "Microsoft.Resources/resourceGroups"
    assert created.location == LOCATION
    assert created.tags == {"purpose": "interop"}
    assert created.properties.provisioning_state == "Succeeded"

    # Same PUT again: 200, same group.
    status, again = groups.create_or_update(
        name, ResourceGroup(location=LOCATION, tags={"purpose": "interop"}), cls=with_status
    )
    assert status == 200
    assert again.id == expected_id

    assert groups.check_existence(name) is True
    fetched = groups.get(name)
    assert fetched.id == expected_id and fetched.location == LOCATION
    assert fetched.tags == {"purpose": "interop"}
    # ARM names are case-insensitive: another casing finds the same group.
    assert groups.get(name.upper()).id.lower() == expected_id.lower()

    listed = {g.name: g for g in groups.list()}
    assert name in listed, sorted(listed)
    assert listed[name].id == expected_id
    # Paged one at a time, the SDK follows nextLink to the same set.
    assert {g.name for g in groups.list(top=1)} == set(listed)

    updated = groups.update(name, ResourceGroupPatchable(tags={"purpose": "interop", "stage": "updated"}))
    assert updated.tags == {"purpose": "interop", "stage": "updated"}
    assert groups.get(name).tags == {"purpose": "interop", "stage": "updated"}

    start = len(_SEEN)
    poller = groups.begin_delete(name)
    assert poller.result() is None
    assert poller.status() == "Succeeded"
    assert poller.done()
    # A real long-running operation: 202, then the poller followed Location to a 200.
    lro = _SEEN[start:]
    assert lro[0][:2] == (202, "DELETE"), lro
    assert lro[-1][:2] == (200, "GET") and f"/resourcegroups/{name}".lower() not in lro[-1][2].lower(), lro
    assert lro[-1][2].startswith(sim["arm"] + "/"), lro

    assert groups.check_existence(name) is False
    with pytest.raises(ResourceNotFoundError) as excinfo:
        groups.get(name)
    assert excinfo.value.status_code == 404
    assert error_code(excinfo.value) == "ResourceGroupNotFound"
    assert name not in {g.name for g in groups.list()}


def test_group_deletion_operation_survives_name_reuse(sim, admin, admin_arm_token):
    name = unique("interop-rg")
    groups = admin.resources.resource_groups
    groups.create_or_update(name, ResourceGroup(location=LOCATION))
    headers = {"Authorization": f"Bearer {admin_arm_token}"}
    url = f"{sim['arm']}{sub_scope(sim)}/resourcegroups/{name}"
    r = requests.delete(url, params={"api-version": RESOURCES_API}, headers=headers, timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 202, r.text
    operation = r.headers["Location"]
    assert operation.startswith(sim["arm"] + "/") and r.headers["Retry-After"] == "1", r.headers
    try:
        # The deletion finished; a new group of the same name is another resource.
        assert groups.check_existence(name) is False
        groups.create_or_update(name, ResourceGroup(location=LOCATION))
        r = requests.get(operation, headers=headers, timeout=HTTP_TIMEOUT_S)
        assert r.status_code == 200, (r.status_code, r.text)
    finally:
        groups.begin_delete(name).result()


def test_subscription_client_lists_exactly_the_sim_subscription(sim, admin):
    subscriptions = list(admin.subscriptions.subscriptions.list())
    assert len(subscriptions) == 1, [s.subscription_id for s in subscriptions]
    sub = subscriptions[0]
    assert sub.subscription_id == sim["subscription_id"]
    assert sub.id == sub_scope(sim)
    assert sub.state == "Enabled"
    assert sub.tenant_id == sim["tenant_id"]
    assert sub.display_name

    fetched = admin.subscriptions.subscriptions.get(sim["subscription_id"])
    assert fetched.subscription_id == sim["subscription_id"] and fetched.state == "Enabled"

    tenants = list(admin.subscriptions.tenants.list())
    assert [t.tenant_id for t in tenants] == [sim["tenant_id"]]


def test_metadata_endpoints_and_classic_audience(sim):
    """/metadata/endpoints needs no token; its audience works with the SDK."""
    r = requests.get(f"{sim['arm']}/metadata/endpoints", params={"api-version": "2022-09-01"}, timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    cloud = r.json()
    assert isinstance(cloud, dict), cloud
    assert cloud["resourceManager"].rstrip("/") == sim["arm"]
    assert cloud["authentication"]["loginEndpoint"].rstrip("/") == sim["aad"]
    audiences = cloud["authentication"]["audiences"]
    assert "https://management.core.windows.net/" in audiences, audiences

    r = requests.get(f"{sim['arm']}/metadata/endpoints", params={"api-version": "2019-05-01"}, timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    clouds = r.json()
    assert isinstance(clouds, list) and [c["name"] for c in clouds] == [cloud["name"]], clouds
    assert clouds[0]["resourceManager"] == cloud["resourceManager"]

    # A token for the classic audience the document names is accepted too.
    kwargs = _client_kwargs(sim)
    kwargs["credential_scopes"] = ["https://management.core.windows.net//.default"]
    with _credential(sim, sim["admin"]["client_id"], sim["admin"]["client_secret"]) as credential:
        with SubscriptionClient(credential, **kwargs) as client:
            assert [s.subscription_id for s in client.subscriptions.list()] == [sim["subscription_id"]]


# --------------------------------------------------------------------------
# User-assigned managed identities
# --------------------------------------------------------------------------
def _graph_sp(graph, principal_id: str) -> requests.Response:
    return graph.call("GET", f"/servicePrincipals/{principal_id}")


def test_user_assigned_identity_lifecycle(sim, admin, graph, resource_group):
    identities = admin.msi.user_assigned_identities
    rg = resource_group.name
    name = unique("interop-id")
    expected_id = identity_id(sim, rg, name)

    status, created = identities.create_or_update(
        rg, name, Identity(location=LOCATION, tags={"purpose": "interop"}), cls=with_status
    )
    assert status == 201
    assert_same_id(created.id, expected_id)
    assert created.name == name
    assert created.type == MSI_TYPE
    assert created.location == LOCATION
    assert created.tags == {"purpose": "interop"}
    for value in (created.principal_id, created.client_id, created.tenant_id):
        assert value and UUID_RE.match(value), created.as_dict()
    assert created.principal_id != created.client_id
    assert created.tenant_id == sim["tenant_id"]

    # A repeated PUT is an update: 200 and the same identity (ids kept).
    status, again = identities.create_or_update(
        rg, name, Identity(location=LOCATION, tags={"purpose": "interop"}), cls=with_status
    )
    assert status == 200
    assert (again.principal_id, again.client_id, again.tenant_id) == (
        created.principal_id, created.client_id, created.tenant_id,
    )

    fetched = identities.get(rg, name)
    assert_same_id(fetched.id, expected_id)
    # The generic resources client: HEAD by id, and the group's resource list with filters.
    generic = admin.resources.resources
    assert generic.check_existence_by_id(expected_id, api_version=MSI_API) is True
    assert generic.check_existence_by_id(expected_id + "-nope", api_version=MSI_API) is False
    listed = list(generic.list_by_resource_group(rg, filter=f"resourceType eq '{MSI_TYPE}'"))
    assert [r.name for r in listed] == [name]
    assert list(generic.list_by_resource_group(rg, filter="tagName eq 'purpose' and tagValue eq 'other'")) == []
    assert [r.name for r in generic.list_by_resource_group(rg, filter="tagName eq 'purpose' and tagValue eq 'interop'")] == [name]
    tagged = admin.resources.resource_groups.list(filter=f"tagName eq 'no-such-tag-{name}'")
    assert list(tagged) == []
    assert (fetched.principal_id, fetched.client_id) == (created.principal_id, created.client_id)

    by_rg = {i.name: i for i in identities.list_by_resource_group(rg)}
    assert list(by_rg) == [name]
    assert by_rg[name].principal_id == created.principal_id
    by_sub = {i.id.lower(): i for i in identities.list_by_subscription()}
    assert expected_id.lower() in by_sub, sorted(by_sub)
    assert by_sub[expected_id.lower()].client_id == created.client_id

    updated = identities.update(rg, name, IdentityUpdate(tags={"purpose": "interop", "stage": "updated"}))
    assert updated.tags == {"purpose": "interop", "stage": "updated"}
    assert updated.principal_id == created.principal_id
    assert identities.get(rg, name).tags == {"purpose": "interop", "stage": "updated"}

    # Its service principal in the directory.
    r = _graph_sp(graph, created.principal_id)
    assert r.status_code == 200, r.text
    sp = r.json()
    assert sp["id"] == created.principal_id
    assert sp["appId"] == created.client_id
    assert sp["servicePrincipalType"] == "ManagedIdentity", sp
    assert sp["displayName"] == name, sp
    alternative = [n.lower() for n in sp.get("alternativeNames", [])]
    assert expected_id.lower() in alternative, sp.get("alternativeNames")
    certs = [k for k in sp.get("keyCredentials", []) if k.get("type") == "AsymmetricX509Cert"]
    assert certs, sp.get("keyCredentials")

    # Delete: 200, then 204 for the identity that is already gone.
    status, _ = identities.delete(rg, name, cls=with_status)
    assert status == 200
    status, _ = identities.delete(rg, name, cls=with_status)
    assert status == 204
    with pytest.raises(ResourceNotFoundError) as excinfo:
        identities.get(rg, name)
    assert error_code(excinfo.value) == "ResourceNotFound"
    assert admin.resources.resources.check_existence_by_id(expected_id, api_version=MSI_API) is False
    assert name not in {i.name for i in identities.list_by_resource_group(rg)}

    r = _graph_sp(graph, created.principal_id)
    assert r.status_code == 404, r.text


def test_deleting_resource_group_removes_identities_principals_and_assignments(sim, admin, graph):
    groups = admin.resources.resource_groups
    identities = admin.msi.user_assigned_identities
    rg = unique("interop-rg")
    groups.create_or_update(rg, ResourceGroup(location=LOCATION))
    rg_scope = f"{sub_scope(sim)}/resourceGroups/{rg}"
    created = [
        identities.create_or_update(rg, name, Identity(location=LOCATION))
        for name in (unique("interop-id"), unique("interop-id"))
    ]
    for identity in created:
        assert _graph_sp(graph, identity.principal_id).status_code == 200
    # A role assignment at the group's scope, for one of the identities.
    assignment_name = str(uuid.uuid4())
    admin.authorization.role_assignments.create(
        rg_scope,
        assignment_name,
        RoleAssignmentCreateParameters(
            role_definition_id=role_definition_id(sim, READER),
            principal_id=created[0].principal_id,
            principal_type="ServicePrincipal",
        ),
    )
    at_scope = {a.name: a for a in admin.authorization.role_assignments.list_for_scope(rg_scope, filter="atScope()")}
    assert assignment_name in at_scope, list(at_scope)

    groups.begin_delete(rg).result()

    assert groups.check_existence(rg) is False
    for identity in created:
        with pytest.raises(ResourceNotFoundError):
            identities.get(rg, identity.name)
        ids = {i.id.lower() for i in identities.list_by_subscription()}
        assert identity.id.lower() not in ids
        r = _graph_sp(graph, identity.principal_id)
        assert r.status_code == 404, r.text
    remaining = list(
        admin.authorization.role_assignments.list_for_subscription(
            filter=f"principalId eq '{created[0].principal_id}'"
        )
    )
    assert remaining == [], [a.id for a in remaining]


# --------------------------------------------------------------------------
# Authorization: role definitions and RBAC end to end
# --------------------------------------------------------------------------
def test_role_definitions_filter_by_name(sim, admin):
    found = list(admin.authorization.role_definitions.list(sub_scope(sim), filter="roleName eq 'Reader'"))
    assert len(found) == 1, [d.role_name for d in found]
    reader = found[0]
    assert reader.name == READER
    assert reader.id.lower() == role_definition_id(sim, READER).lower()
    assert reader.role_name == "Reader"
    assert reader.role_type == "BuiltInRole"
    assert reader.type == "Microsoft.Authorization/roleDefinitions"
    assert reader.permissions and "*/read" in reader.permissions[0].actions

    builtins = {d.role_name: d.name for d in admin.authorization.role_definitions.list(sub_scope(sim))}
    assert builtins.get("Owner") == OWNER and builtins.get("Contributor") == CONTRIBUTOR, builtins
    for role in (
        "User Access Administrator",
        "Role Based Access Control Administrator",
        "Managed Identity Operator",
        "Managed Identity Contributor",
        "Virtual Machine Contributor",
        "Key Vault Secrets User",
        "Key Vault Secrets Officer",
        "Storage Blob Data Reader",
        "Storage Blob Data Contributor",
    ):
        assert role in builtins, (role, sorted(builtins))

    assert admin.authorization.role_definitions.get(sub_scope(sim), OWNER).role_name == "Owner"


def test_rbac_end_to_end(sim, admin, graph, resource_group, secret_app):
    app, sp, secret = secret_app
    rg = resource_group.name
    rg_scope = resource_group.id
    assignments = admin.authorization.role_assignments

    user = ArmClients(sim, _credential(sim, app["appId"], secret))
    try:
        # No role anywhere: even reading the group is refused.
        with pytest.raises(HttpResponseError) as excinfo:
            user.resources.resource_groups.get(rg)
        assert excinfo.value.status_code == 403
        assert error_code(excinfo.value) == "AuthorizationFailed"
        message = excinfo.value.error.message
        assert sp["id"] in message, message
        assert "'Microsoft.Resources/subscriptions/resourceGroups/read'" in message, message
        assert f"over scope '{rg_scope}'".lower() in message.lower(), message

        # The admin (Owner of the subscription) makes it a Reader of the group.
        name = str(uuid.uuid4())
        params = RoleAssignmentCreateParameters(
            role_definition_id=role_definition_id(sim, READER),
            principal_id=sp["id"],
            principal_type="ServicePrincipal",
        )
        status, assignment = assignments.create(rg_scope, name, params, cls=with_status)
        assert status == 201
        assert assignment.name == name
        assert assignment.id.lower() == f"{rg_scope}/providers/Microsoft.Authorization/roleAssignments/{name}".lower()
        assert assignment.type == "Microsoft.Authorization/roleAssignments"
        assert assignment.scope.lower() == rg_scope.lower()
        assert assignment.principal_id == sp["id"]
        assert assignment.principal_type == "ServicePrincipal"
        assert assignment.role_definition_id.lower() == role_definition_id(sim, READER).lower()

        fetched = assignments.get(rg_scope, name)
        assert fetched.id == assignment.id and fetched.principal_id == sp["id"]

        # Reader: can read the group ...
        group = user.resources.resource_groups.get(rg)
        assert group.id == rg_scope
        # ... but not write into it.
        with pytest.raises(HttpResponseError) as excinfo:
            user.msi.user_assigned_identities.create_or_update(rg, unique("interop-id"), Identity(location=LOCATION))
        assert excinfo.value.status_code == 403
        assert error_code(excinfo.value) == "AuthorizationFailed"
        assert "Microsoft.ManagedIdentity/userAssignedIdentities/write" in excinfo.value.error.message
        # Listing shows only what the principal may read (as on Azure, no 403).
        assert [g.name for g in user.resources.resource_groups.list()] == [rg]

        # The same assignment again under a new GUID is a conflict.
        with pytest.raises(ResourceExistsError) as excinfo:
            assignments.create(rg_scope, str(uuid.uuid4()), params)
        assert excinfo.value.status_code == 409
        assert error_code(excinfo.value) == "RoleAssignmentExists"

        # atScope(): the assignments at this scope and inherited from above, none below.
        at_scope = {a.name: a for a in assignments.list_for_scope(rg_scope, filter="atScope()")}
        assert name in at_scope, list(at_scope)
        assert {a.scope.lower() for a in at_scope.values()} <= {rg_scope.lower(), sub_scope(sim).lower(), "/"}, [
            a.scope for a in at_scope.values()
        ]
        owners = [a for a in at_scope.values() if a.principal_id == sim["admin"]["object_id"]]
        assert owners and owners[0].scope == sub_scope(sim), "the admin's Owner assignment is inherited"
        for_principal = list(assignments.list_for_scope(rg_scope, filter=f"principalId eq '{sp['id']}'"))
        assert [a.name for a in for_principal] == [name]
        assert for_principal[0].principal_id == sp["id"]

        deleted = assignments.delete(rg_scope, name)
        assert deleted is not None and deleted.name == name
        with pytest.raises(ResourceNotFoundError):
            assignments.get(rg_scope, name)
        assert list(assignments.list_for_scope(rg_scope, filter=f"principalId eq '{sp['id']}'")) == []

        # Without the assignment the principal is refused again.
        with pytest.raises(HttpResponseError) as excinfo:
            user.resources.resource_groups.get(rg)
        assert excinfo.value.status_code == 403
        assert error_code(excinfo.value) == "AuthorizationFailed"
    finally:
        user.close()


def test_contributor_writes_but_cannot_delegate(sim, admin, graph, resource_group, secret_app):
    app, sp, secret = secret_app
    rg = resource_group.name
    rg_scope = resource_group.id
    admin.authorization.role_assignments.create(
        rg_scope,
        str(uuid.uuid4()),
        RoleAssignmentCreateParameters(
            role_definition_id=role_definition_id(sim, CONTRIBUTOR), principal_id=sp["id"], principal_type="ServicePrincipal"
        ),
    )
    user = ArmClients(sim, _credential(sim, app["appId"], secret))
    try:
        identities = user.msi.user_assigned_identities
        name = unique("interop-id")
        created = identities.create_or_update(rg, name, Identity(location=LOCATION))
        assert UUID_RE.match(created.principal_id), created.as_dict()
        assert identities.update(rg, name, IdentityUpdate(tags={"by": "contributor"})).tags == {"by": "contributor"}
        assert [i.name for i in identities.list_by_resource_group(rg)] == [name]
        assert _graph_sp(graph, created.principal_id).status_code == 200

        # Contributor has no Microsoft.Authorization/*/write: it cannot hand out roles.
        with pytest.raises(HttpResponseError) as excinfo:
            user.authorization.role_assignments.create(
                rg_scope,
                str(uuid.uuid4()),
                RoleAssignmentCreateParameters(
                    role_definition_id=role_definition_id(sim, READER),
                    principal_id=created.principal_id,
                    principal_type="ServicePrincipal",
                ),
            )
        assert excinfo.value.status_code == 403
        assert error_code(excinfo.value) == "AuthorizationFailed"
        assert "Microsoft.Authorization/roleAssignments/write" in excinfo.value.error.message
        # Nor act outside its group.
        with pytest.raises(HttpResponseError) as excinfo:
            user.resources.resource_groups.create_or_update(unique("interop-rg"), ResourceGroup(location=LOCATION))
        assert excinfo.value.status_code == 403
    finally:
        user.close()


def test_group_scoped_contributor_follows_its_group_deletion(sim, admin, graph, resource_group, secret_app):
    app, sp, secret = secret_app
    rg = resource_group.name
    admin.authorization.role_assignments.create(
        resource_group.id,
        str(uuid.uuid4()),
        RoleAssignmentCreateParameters(
            role_definition_id=role_definition_id(sim, CONTRIBUTOR), principal_id=sp["id"], principal_type="ServicePrincipal"
        ),
    )
    user = ArmClients(sim, _credential(sim, app["appId"], secret))
    try:
        created = user.msi.user_assigned_identities.create_or_update(rg, unique("interop-id"), Identity(location=LOCATION))
        # Contributor on the group may delete it (as `az group delete` does), and the
        # poller must be able to follow the operation it was handed to the end.
        poller = user.resources.resource_groups.begin_delete(rg)
        try:
            poller.result()
        finally:
            # Whatever the poll said, the deletion itself was accepted and carried out.
            assert admin.resources.resource_groups.check_existence(rg) is False
            assert _graph_sp(graph, created.principal_id).status_code == 404
        assert poller.status() == "Succeeded"
    finally:
        user.close()


def test_role_assignment_for_unknown_principal(sim, admin, resource_group):
    assignments = admin.authorization.role_assignments
    unknown = str(uuid.uuid4())
    # Without principalType an unknown principal is refused. (The SDK model defaults
    # principal_type to "User"; None leaves it out of the request body.)
    with pytest.raises(HttpResponseError) as excinfo:
        assignments.create(
            resource_group.id,
            str(uuid.uuid4()),
            RoleAssignmentCreateParameters(
                role_definition_id=role_definition_id(sim, READER), principal_id=unknown, principal_type=None
            ),
        )
    assert excinfo.value.status_code == 400
    assert error_code(excinfo.value) == "PrincipalNotFound"
    assert " does not exist in the directory " in excinfo.value.error.message
    assert unknown in excinfo.value.error.message

    # ... with a principalType it is accepted (Azure's answer to replication delay).
    name = str(uuid.uuid4())
    created = assignments.create(
        resource_group.id,
        name,
        RoleAssignmentCreateParameters(
            role_definition_id=role_definition_id(sim, READER), principal_id=unknown, principal_type="ServicePrincipal"
        ),
    )
    assert created.principal_id == unknown and created.principal_type == "ServicePrincipal"
    assignments.delete(resource_group.id, name)


# --------------------------------------------------------------------------
# Bad input, with raw requests
# --------------------------------------------------------------------------
class RawArm:
    def __init__(self, sim, token: str | None):
        self.base = sim["arm"]
        self.token = token
        self.statuses: list[int] = []

    def call(self, method: str, path: str, *, api_version: str | None = None, data=None, json_body=None,
             token: bool = True) -> requests.Response:
        headers = {}
        if token and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if data is not None:
            headers["Content-Type"] = "application/json"
        params = {"api-version": api_version} if api_version else None
        r = requests.request(method, self.base + path, params=params, data=data, json=json_body,
                             headers=headers, timeout=HTTP_TIMEOUT_S)
        self.statuses.append(r.status_code)
        assert r.status_code < 500, f"{method} {path}: {r.status_code} {r.text}"
        return r


def assert_arm_error(r: requests.Response, status: int, code: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    error = r.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    return error


def test_bad_input_sampling(sim, admin_arm_token, admin_graph_token, resource_group):
    raw = RawArm(sim, admin_arm_token)
    sub = sub_scope(sim)
    rg_path = f"{sub}/resourceGroups/{resource_group.name}"
    id_path = f"{rg_path}/providers/{MSI_TYPE}"

    # Control: the same request with everything right works.
    assert raw.call("GET", rg_path, api_version=RESOURCES_API).status_code == 200

    assert_arm_error(raw.call("GET", f"{sub}/resourcegroups"), 400, "MissingApiVersionParameter")
    assert_arm_error(raw.call("GET", rg_path), 400, "MissingApiVersionParameter")

    error = assert_arm_error(
        raw.call("GET", f"{id_path}/{unique('interop-id')}", api_version="2010-01-01"), 400, "NoRegisteredProviderFound"
    )
    assert "2010-01-01" in error["message"], error
    assert_arm_error(
        raw.call("PUT", f"{id_path}/{unique('interop-id')}", api_version="2010-01-01", json_body={"location": LOCATION}),
        400, "NoRegisteredProviderFound",
    )

    new_rg = f"{sub}/resourceGroups/{unique('interop-rg')}"
    assert_arm_error(
        raw.call("PUT", new_rg, api_version=RESOURCES_API, data=b'{"location": "westeurope",'),
        400, "InvalidRequestContent",
    )
    assert_arm_error(
        raw.call("PUT", f"{id_path}/{unique('interop-id')}", api_version=MSI_API, data=b"{not json"),
        400, "InvalidRequestContent",
    )

    assert_arm_error(raw.call("PUT", new_rg, api_version=RESOURCES_API, json_body={"tags": {}}), 400, "LocationRequired")
    assert_arm_error(
        raw.call("PUT", f"{id_path}/{unique('interop-id')}", api_version=MSI_API, json_body={}), 400, "LocationRequired"
    )
    # None of the refused PUTs created anything.
    assert raw.call("HEAD", new_rg, api_version=RESOURCES_API).status_code == 404

    error = assert_arm_error(
        raw.call("PUT", f"{id_path}/a", api_version=MSI_API, json_body={"location": LOCATION}), 400, "InvalidResourceName"
    )
    assert "'a'" in error["message"], error

    missing_rg = unique("interop-missing")
    error = assert_arm_error(
        raw.call("GET", f"{sub}/resourceGroups/{missing_rg}", api_version=RESOURCES_API), 404, "ResourceGroupNotFound"
    )
    assert missing_rg in error["message"], error
    assert_arm_error(
        raw.call(
            "PUT", f"{sub}/resourceGroups/{missing_rg}/providers/{MSI_TYPE}/{unique('interop-id')}",
            api_version=MSI_API, json_body={"location": LOCATION},
        ),
        404, "ResourceGroupNotFound",
    )
    assert_arm_error(
        raw.call("GET", f"{id_path}/{unique('interop-id')}", api_version=MSI_API), 404, "ResourceNotFound"
    )

    r = raw.call("GET", rg_path, api_version=RESOURCES_API, token=False)
    assert_arm_error(r, 401, "AuthenticationFailed")
    assert r.headers["WWW-Authenticate"].startswith("Bearer"), r.headers
    for token, code in (
        ("not-a-jwt", "InvalidAuthenticationToken"),
        (admin_graph_token, "InvalidAuthenticationTokenAudience"),  # a valid token, for Graph
    ):
        r = RawArm(sim, token).call("GET", rg_path, api_version=RESOURCES_API)
        raw.statuses.append(r.status_code)
        assert_arm_error(r, 401, code)
        assert r.headers["WWW-Authenticate"].startswith("Bearer"), r.headers

    assert all(status < 500 for status in raw.statuses), raw.statuses
