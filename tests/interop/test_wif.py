"""Workload identity federation with the official clients.

A user-assigned identity gets a federated identity credential (azure-mgmt-msi) that trusts an
OIDC issuer this test serves on loopback. azure-identity's WorkloadIdentityCredential reads the
issuer's token from a file, as on AKS (AZURE_FEDERATED_TOKEN_FILE), and exchanges it at misim's
AAD for the identity's token (spec/tokens.md §6.2).
"""

from __future__ import annotations

import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import WorkloadIdentityCredential
from azure.mgmt.msi.v2024_11_30.models import FederatedIdentityCredential, Identity
from azure.mgmt.resource.resources.models import ResourceGroup

from conftest import HTTP_TIMEOUT_S
from oidc_issuer import EXCHANGE, OidcIssuer
from test_arm import ArmClients, _credential, unique

SUBJECT = "system:serviceaccount:default:workload"
LOCATION = "westeurope"


@pytest.fixture
def issuer():
    """An OIDC issuer on loopback, as a Kubernetes cluster publishes one."""
    served = OidcIssuer()
    yield served
    served.close()


def test_workload_identity_credential_gets_the_identitys_token(sim, tmp_path, issuer):
    url = issuer.url
    admin = ArmClients(sim, _credential(sim, sim["admin"]["client_id"], sim["admin"]["client_secret"]))
    rg = unique("interop-wif")
    admin.resources.resource_groups.create_or_update(rg, ResourceGroup(location=LOCATION))
    try:
        identity = admin.msi.user_assigned_identities.create_or_update(rg, "workload", Identity(location=LOCATION))
        admin.msi.federated_identity_credentials.create_or_update(
            rg, "workload", "k8s",
            FederatedIdentityCredential(issuer=url, subject=SUBJECT, audiences=[EXCHANGE]))

        token_file = tmp_path / "token"
        token_file.write_text(issuer.token(SUBJECT))
        credential = WorkloadIdentityCredential(
            tenant_id=sim["tenant_id"], client_id=identity.client_id, token_file_path=str(token_file),
            authority=sim["aad"], disable_instance_discovery=True,
            connection_timeout=HTTP_TIMEOUT_S, read_timeout=HTTP_TIMEOUT_S)
        access = credential.get_token("https://management.azure.com/.default")
        claims = jwt.decode(access.token, options={"verify_signature": False})
        assert claims["oid"] == identity.principal_id, claims
        assert claims["appid"] == identity.client_id, claims
        assert claims["xms_mirid"].lower() == identity.id.lower(), claims

        # A token for another subject is refused with Entra's error for it.
        other = tmp_path / "other"
        other.write_text(issuer.token("system:serviceaccount:default:other"))
        refused = WorkloadIdentityCredential(
            tenant_id=sim["tenant_id"], client_id=identity.client_id, token_file_path=str(other),
            authority=sim["aad"], disable_instance_discovery=True,
            connection_timeout=HTTP_TIMEOUT_S, read_timeout=HTTP_TIMEOUT_S)
        with pytest.raises(ClientAuthenticationError) as excinfo:
            refused.get_token("https://management.azure.com/.default")
        assert "AADSTS70021" in str(excinfo.value)
    finally:
        admin.resources.resource_groups.begin_delete(rg).result()
        admin.close()
