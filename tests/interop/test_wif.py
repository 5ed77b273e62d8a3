"""Workload identity federation with the official clients.

A user-assigned identity gets a federated identity credential (azure-mgmt-msi) that trusts an
OIDC issuer this test serves on loopback. azure-identity's WorkloadIdentityCredential reads the
issuer's token from a file, as on AKS (AZURE_FEDERATED_TOKEN_FILE), and exchanges it at misim's
AAD for the identity's token (spec/tokens.md §6.2).
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import WorkloadIdentityCredential
from azure.mgmt.msi.v2024_11_30.models import FederatedIdentityCredential, Identity
from azure.mgmt.resource.resources.models import ResourceGroup
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import HTTP_TIMEOUT_S
from test_arm import ArmClients, _credential, unique

EXCHANGE = "api://AzureADTokenExchange"
SUBJECT = "system:serviceaccount:default:workload"
LOCATION = "westeurope"


def _b64(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture
def issuer():
    """An OIDC issuer on loopback: discovery document and key set of one RSA key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = key.public_key().public_numbers()
    documents: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            body = documents.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body or b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    url = f"http://127.0.0.1:{server.server_port}"
    documents["/.well-known/openid-configuration"] = json.dumps(
        {"issuer": url, "jwks_uri": f"{url}/keys"}).encode()
    documents["/keys"] = json.dumps({"keys": [
        {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": "k1", "n": _b64(numbers.n), "e": _b64(numbers.e)}
    ]}).encode()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield url, key
    server.shutdown()
    server.server_close()


def _token(url: str, key, subject: str = SUBJECT) -> str:
    now = int(time.time())
    claims = {"iss": url, "sub": subject, "aud": [EXCHANGE], "iat": now, "nbf": now, "exp": now + 3600,
              "jti": str(uuid.uuid4())}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})


def test_workload_identity_credential_gets_the_identitys_token(sim, tmp_path, issuer):
    url, key = issuer
    admin = ArmClients(sim, _credential(sim, sim["admin"]["client_id"], sim["admin"]["client_secret"]))
    rg = unique("interop-wif")
    admin.resources.resource_groups.create_or_update(rg, ResourceGroup(location=LOCATION))
    try:
        identity = admin.msi.user_assigned_identities.create_or_update(rg, "workload", Identity(location=LOCATION))
        admin.msi.federated_identity_credentials.create_or_update(
            rg, "workload", "k8s",
            FederatedIdentityCredential(issuer=url, subject=SUBJECT, audiences=[EXCHANGE]))

        token_file = tmp_path / "token"
        token_file.write_text(_token(url, key))
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
        other.write_text(_token(url, key, subject="system:serviceaccount:default:other"))
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
