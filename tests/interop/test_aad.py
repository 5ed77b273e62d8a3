"""misim's Entra ID (AAD) service driven by the official Microsoft clients.

MSAL Python and azure-identity obtain tokens from the simulator; PyJWT checks
every token against the keys published through the OpenID discovery document.
Graph (a small subset of /v1.0) is used, as on real Entra, to register the
applications and credentials the tests sign in with.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import time
import uuid

import jwt
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import CertificateCredential, ClientSecretCredential
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from conftest import ARM, GRAPH, HTTP_TIMEOUT_S, UUID_RE, cca

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Entra's error timestamp format, e.g. "2024-01-31 12:34:56Z"
TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d+)?Z$")


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Cert:
    """A self-signed RSA 2048 certificate and its key, as an app credential."""

    def __init__(self, cn: str = "misim-interop"):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = dt.datetime.now(dt.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.der = self.cert.public_bytes(serialization.Encoding.DER)
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        self.key_pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
        self.sha1_hex = hashlib.sha1(self.der).hexdigest()
        self.x5t = b64url(hashlib.sha1(self.der).digest())
        self.x5t_s256 = b64url(hashlib.sha256(self.der).digest())

    def key_credential(self) -> dict:
        return {
            "type": "AsymmetricX509Cert",
            "usage": "Verify",
            "key": base64.b64encode(self.der).decode("ascii"),
            "displayName": "CN=misim-interop",
        }

    def assertion(self, client_id: str, audience: str, *, lifetime_s: int = 600, offset_s: int = 0) -> str:
        """A client assertion signed with this certificate (RS256, x5t)."""
        now = int(time.time()) + offset_s
        claims = {
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": str(uuid.uuid4()),
            "nbf": now,
            "iat": now,
            "exp": now + lifetime_s,
        }
        return jwt.encode(claims, self.key_pem, algorithm="RS256", headers={"x5t": self.x5t})


class RecordingSession(requests.Session):
    """A requests session MSAL can use as http_client; remembers the form posts."""

    def __init__(self):
        super().__init__()
        self.posted: list[tuple[str, dict]] = []

    def post(self, url, data=None, **kwargs):
        self.posted.append((url, dict(data or {})))
        return super().post(url, data=data, **kwargs)


def token_post(url: str, data: dict) -> requests.Response:
    return requests.post(url, data=data, timeout=HTTP_TIMEOUT_S)


def assert_entra_error(body: dict, code: int, error: str | None = None) -> None:
    """The shape of an Entra token-endpoint error, with the expected AADSTS code."""
    assert body.get("error_codes") == [code], body
    if error is not None:
        assert body.get("error") == error, body
    assert body["error_description"].startswith(f"AADSTS{code}:"), body
    assert TIMESTAMP_RE.match(body["timestamp"]), body
    assert UUID_RE.match(body["trace_id"]), body
    assert UUID_RE.match(body["correlation_id"]), body


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def openid_config(authority):
    r = requests.get(f"{authority}/v2.0/.well-known/openid-configuration", timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="session")
def jwks(openid_config):
    r = requests.get(openid_config["jwks_uri"], timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="session")
def token_endpoint(openid_config):
    return openid_config["token_endpoint"]


@pytest.fixture(scope="session")
def verify(sim, jwks):
    """Verify an access token's signature against the discovered JWKS and check its claims."""
    keyset = jwt.PyJWKSet.from_dict(jwks)
    issuer = f"{sim['aad']}/{sim['tenant_id']}/"

    def check(token: str, *, resource: str, appid: str, oid: str | None = None, appidacr: str | None = None) -> dict:
        header = jwt.get_unverified_header(token)
        assert header["alg"] == "RS256", header
        assert header.get("typ") == "JWT", header
        kid = header["kid"]
        signing = [k for k in jwks["keys"] if k["kid"] == kid]
        assert signing, f"token kid {kid} is not in the JWKS"
        assert header["x5t"] == signing[0]["x5t"], header
        claims = jwt.decode(
            token,
            key=keyset[kid].key,
            algorithms=["RS256"],
            audience=resource,
            issuer=issuer,
            options={"require": ["exp", "iat", "nbf", "iss", "aud"]},
        )
        assert claims["aud"] == resource
        assert claims["tid"] == sim["tenant_id"]
        assert claims["appid"] == appid
        assert claims["ver"] == "1.0"
        assert claims["idtyp"] == "app"
        assert UUID_RE.match(claims["oid"]), claims
        assert claims["sub"] == claims["oid"], claims  # app-only tokens: sub is the SP's object id
        if oid is not None:
            assert claims["oid"] == oid, claims
        if appidacr is not None:
            assert claims["appidacr"] == appidacr, claims
        now = time.time()
        assert claims["nbf"] <= now + 5 and claims["iat"] <= now + 5, claims
        assert 300 < claims["exp"] - now <= 4 * 3600, claims
        return claims

    return check


@pytest.fixture
def cert_app(graph, request):
    """A fresh application with a certificate credential and a service principal."""
    cert = Cert()
    app = graph.create_application(f"interop-{request.node.name}", (cert,))
    sp = graph.create_service_principal(app["appId"])
    return app, sp, cert


# --------------------------------------------------------------------------
# The suite's own safety net
# --------------------------------------------------------------------------
def test_non_loopback_network_access_is_refused(sim):
    """conftest's guard stops any client that would leave loopback (before DNS)."""
    import socket

    from conftest import NonLoopbackNetworkAccess

    with pytest.raises(NonLoopbackNetworkAccess):
        requests.get("https://login.microsoftonline.com/common/discovery/instance", timeout=1)
    with pytest.raises(NonLoopbackNetworkAccess):
        socket.create_connection(("192.0.2.1", 443), timeout=1)  # TEST-NET-1, never reached
    host = sim["aad"].split("://", 1)[1].rsplit(":", 1)[0]
    assert socket.getaddrinfo(host, None)  # loopback still resolves


# --------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------
def test_discovery_documents_and_jwks(sim, authority, openid_config, jwks):
    assert openid_config["issuer"] == f"{authority}/v2.0"
    assert openid_config["token_endpoint"] == f"{authority}/oauth2/v2.0/token"
    assert openid_config["jwks_uri"].startswith(sim["aad"] + "/")
    assert "RS256" in openid_config["id_token_signing_alg_values_supported"]
    assert {"client_secret_post", "private_key_jwt"} <= set(openid_config["token_endpoint_auth_methods_supported"])

    r = requests.get(f"{authority}/.well-known/openid-configuration", timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    v1 = r.json()
    assert v1["issuer"] == f"{authority}/"
    assert v1["token_endpoint"] == f"{authority}/oauth2/token"
    r = requests.get(v1["jwks_uri"], timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    v1_kids = {k["kid"] for k in r.json()["keys"]}

    assert jwks["keys"], jwks
    for key in jwks["keys"]:
        assert key["kty"] == "RSA" and key["use"] == "sig", key
        cert = x509.load_der_x509_certificate(base64.b64decode(key["x5c"][0]))
        numbers = cert.public_key().public_numbers()
        assert numbers.n == int.from_bytes(b64url_decode(key["n"]), "big"), key["kid"]
        assert numbers.e == int.from_bytes(b64url_decode(key["e"]), "big"), key["kid"]
        der = cert.public_bytes(serialization.Encoding.DER)
        assert key["x5t"] == b64url(hashlib.sha1(der).digest()), key
        assert key["kid"] in v1_kids, "v1 and v2 JWKS should publish the same signing keys"


# --------------------------------------------------------------------------
# Client secret
# --------------------------------------------------------------------------
@pytest.mark.parametrize("resource", [ARM, GRAPH])
def test_msal_admin_secret_token_verifies(sim, authority, verify, resource):
    admin = sim["admin"]
    app = cca(authority, admin["client_id"], admin["client_secret"])
    result = app.acquire_token_for_client(scopes=[f"{resource}/.default"])
    assert "access_token" in result, result
    assert result["token_type"] == "Bearer"
    assert 300 < result["expires_in"] <= 4 * 3600
    verify(
        result["access_token"],
        resource=resource,
        appid=admin["client_id"],
        oid=admin["object_id"],
        appidacr="1",
    )
    # A second call is served from MSAL's cache: the token was accepted as-is.
    again = app.acquire_token_for_client(scopes=[f"{resource}/.default"])
    assert again["access_token"] == result["access_token"]
    assert again.get("token_source") == "cache"


def test_v2_raw_response_shape(sim, token_endpoint):
    admin = sim["admin"]
    r = token_post(token_endpoint, {
        "grant_type": "client_credentials",
        "client_id": admin["client_id"],
        "client_secret": admin["client_secret"],
        "scope": f"{ARM}/.default",
    })
    assert r.status_code == 200, r.text
    assert "no-store" in r.headers.get("Cache-Control", "")
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert isinstance(body["expires_in"], int) and 300 < body["expires_in"] <= 4 * 3600, body
    assert isinstance(body["ext_expires_in"], int), body
    assert "resource" not in body and "expires_on" not in body, body


def test_v1_endpoint_with_resource(sim, authority, verify):
    admin = sim["admin"]
    resource = f"{ARM}/"  # v1 clients often send the trailing slash; aud must echo it exactly
    r = token_post(f"{authority}/oauth2/token", {
        "grant_type": "client_credentials",
        "client_id": admin["client_id"],
        "client_secret": admin["client_secret"],
        "resource": resource,
    })
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["resource"] == resource
    for field in ("expires_in", "ext_expires_in", "expires_on", "not_before"):
        assert isinstance(body[field], str) and body[field].isdigit(), (field, body)
    now = time.time()
    assert abs(int(body["expires_on"]) - (now + int(body["expires_in"]))) < 30, body
    claims = verify(body["access_token"], resource=resource, appid=admin["client_id"], oid=admin["object_id"], appidacr="1")
    assert int(body["expires_on"]) == claims["exp"]


def test_msal_wrong_secret(sim, authority):
    result = cca(authority, sim["admin"]["client_id"], "not-the-secret").acquire_token_for_client(
        scopes=[f"{ARM}/.default"]
    )
    assert "access_token" not in result, result
    assert result["error"] == "invalid_client"
    assert 7000215 in result["error_codes"], result
    assert result["error_description"].startswith("AADSTS7000215:"), result


@pytest.mark.parametrize("endpoint", ["v2", "v1"])
def test_raw_wrong_secret_is_401(sim, authority, endpoint):
    data = {
        "grant_type": "client_credentials",
        "client_id": sim["admin"]["client_id"],
        "client_secret": "not-the-secret",
    }
    if endpoint == "v2":
        url, data["scope"] = f"{authority}/oauth2/v2.0/token", f"{ARM}/.default"
    else:
        url, data["resource"] = f"{authority}/oauth2/token", ARM
    correlation = str(uuid.uuid4())
    r = requests.post(url, data=data, headers={"client-request-id": correlation}, timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 401, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert_entra_error(body, 7000215, "invalid_client")
    assert body["correlation_id"] == correlation, "Entra echoes client-request-id as correlation_id"


def test_unknown_client_id(authority):
    client_id = str(uuid.uuid4())
    result = cca(authority, client_id, "whatever").acquire_token_for_client(scopes=[f"{ARM}/.default"])
    assert "access_token" not in result, result
    assert 700016 in result["error_codes"], result
    assert result["error_description"].startswith("AADSTS700016:"), result

    r = token_post(f"{authority}/oauth2/v2.0/token", {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": "whatever",
        "scope": f"{ARM}/.default",
    })
    assert r.status_code == 400, r.text
    assert_entra_error(r.json(), 700016, "unauthorized_client")


def test_unknown_resource(sim, authority):
    admin = sim["admin"]
    result = cca(authority, admin["client_id"], admin["client_secret"]).acquire_token_for_client(
        scopes=["https://no-such-resource.example/.default"]
    )
    assert "access_token" not in result, result
    assert 500011 in result["error_codes"], result
    assert result["error"] == "invalid_resource", result
    assert result["error_description"].startswith("AADSTS500011:"), result


def test_app_without_service_principal_cannot_sign_in(graph, authority):
    app = graph.create_application("interop-no-sp")
    secret = graph.add_password(app["id"])["secretText"]
    result = cca(authority, app["appId"], secret).acquire_token_for_client(scopes=[f"{ARM}/.default"])
    assert "access_token" not in result, result
    assert 7000229 in result["error_codes"], result
    assert result["error_description"].startswith("AADSTS7000229:"), result


# --------------------------------------------------------------------------
# Certificates (client assertions)
# --------------------------------------------------------------------------
def _assertion_header(session: RecordingSession) -> dict:
    posts = [data for url, data in session.posted if "client_assertion" in data]
    assert posts, "MSAL sent no client assertion"
    assert posts[-1]["client_assertion_type"] == ASSERTION_TYPE
    return jwt.get_unverified_header(posts[-1]["client_assertion"])


def test_msal_certificate_thumbprint_rs256(authority, verify, cert_app):
    app, sp, cert = cert_app
    session = RecordingSession()
    client = cca(
        authority,
        app["appId"],
        {"private_key": cert.key_pem, "thumbprint": cert.sha1_hex},
        http_client=session,
    )
    result = client.acquire_token_for_client(scopes=[f"{ARM}/.default"])
    assert "access_token" in result, result
    header = _assertion_header(session)
    assert header["alg"] == "RS256" and header["x5t"].rstrip("=") == cert.x5t, header  # MSAL pads its base64url
    verify(result["access_token"], resource=ARM, appid=app["appId"], oid=sp["id"], appidacr="2")


def test_msal_certificate_public_certificate_ps256(authority, verify, cert_app):
    app, sp, cert = cert_app
    session = RecordingSession()
    client = cca(
        authority,
        app["appId"],
        {"private_key": cert.key_pem, "public_certificate": cert.cert_pem},
        http_client=session,
    )
    result = client.acquire_token_for_client(scopes=[f"{GRAPH}/.default"])
    assert "access_token" in result, result
    header = _assertion_header(session)
    assert header["alg"] == "PS256" and header["x5t#S256"].rstrip("=") == cert.x5t_s256, header
    assert "x5c" in header, header  # MSAL also sends the chain (subject name/issuer auth)
    verify(result["access_token"], resource=GRAPH, appid=app["appId"], oid=sp["id"], appidacr="2")


def test_unregistered_certificate(authority, cert_app):
    app, _sp, _registered = cert_app
    other = Cert("not-registered")
    for credential in (
        {"private_key": other.key_pem, "thumbprint": other.sha1_hex},
        {"private_key": other.key_pem, "public_certificate": other.cert_pem},
    ):
        result = cca(authority, app["appId"], credential).acquire_token_for_client(scopes=[f"{ARM}/.default"])
        assert "access_token" not in result, result
        assert result["error"] == "invalid_client", result
        assert 700027 in result["error_codes"], result
        assert result["error_description"].startswith("AADSTS700027:"), result


def test_raw_assertion_accepted(token_endpoint, verify, cert_app):
    """Control for the negative assertion tests: the untampered assertion works."""
    app, sp, cert = cert_app
    r = token_post(token_endpoint, {
        "grant_type": "client_credentials",
        "client_id": app["appId"],
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": cert.assertion(app["appId"], token_endpoint),
        "scope": f"{ARM}/.default",
    })
    assert r.status_code == 200, r.text
    verify(r.json()["access_token"], resource=ARM, appid=app["appId"], oid=sp["id"], appidacr="2")


def test_tampered_assertion(token_endpoint, cert_app):
    app, _sp, cert = cert_app
    header, payload, signature = cert.assertion(app["appId"], token_endpoint).split(".")
    claims = json.loads(b64url_decode(payload))
    claims["jti"] = str(uuid.uuid4())  # flip one claim, keep the original signature
    forged = ".".join([header, b64url(json.dumps(claims, separators=(",", ":")).encode()), signature])
    r = token_post(token_endpoint, {
        "grant_type": "client_credentials",
        "client_id": app["appId"],
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": forged,
        "scope": f"{ARM}/.default",
    })
    assert r.status_code == 401, r.text
    assert_entra_error(r.json(), 700027, "invalid_client")


def test_expired_assertion(token_endpoint, cert_app):
    app, _sp, cert = cert_app
    # Valid for 5 minutes, 20 minutes ago: expired well beyond any clock-skew allowance.
    assertion = cert.assertion(app["appId"], token_endpoint, lifetime_s=300, offset_s=-1200)
    r = token_post(token_endpoint, {
        "grant_type": "client_credentials",
        "client_id": app["appId"],
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        "scope": f"{ARM}/.default",
    })
    assert r.status_code == 401, r.text
    assert_entra_error(r.json(), 700024, "invalid_client")


def test_wrong_audience_assertion(token_endpoint, cert_app):
    app, _sp, cert = cert_app
    assertion = cert.assertion(app["appId"], "https://sts.example.invalid/oauth2/v2.0/token")
    r = token_post(token_endpoint, {
        "grant_type": "client_credentials",
        "client_id": app["appId"],
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        "scope": f"{ARM}/.default",
    })
    assert r.status_code in (400, 401), r.text
    assert_entra_error(r.json(), 700023, "invalid_client")


# --------------------------------------------------------------------------
# azure-identity
# --------------------------------------------------------------------------
@pytest.mark.parametrize("with_scheme", [False, True], ids=["host-only", "https"])
def test_azure_identity_client_secret_credential(sim, verify, with_scheme):
    admin = sim["admin"]
    host = sim["aad"] if with_scheme else sim["aad"].split("://", 1)[1]
    with ClientSecretCredential(
        sim["tenant_id"],
        admin["client_id"],
        admin["client_secret"],
        authority=host,
        disable_instance_discovery=True,
        connection_timeout=HTTP_TIMEOUT_S,
        read_timeout=HTTP_TIMEOUT_S,
    ) as credential:
        token = credential.get_token(f"{ARM}/.default")
    assert abs(token.expires_on - (time.time() + 3599)) < 120, token.expires_on
    claims = verify(token.token, resource=ARM, appid=admin["client_id"], oid=admin["object_id"], appidacr="1")
    assert token.expires_on == claims["exp"]


def test_azure_identity_wrong_secret(sim):
    with ClientSecretCredential(
        sim["tenant_id"],
        sim["admin"]["client_id"],
        "not-the-secret",
        authority=sim["aad"],
        disable_instance_discovery=True,
        connection_timeout=HTTP_TIMEOUT_S,
        read_timeout=HTTP_TIMEOUT_S,
    ) as credential:
        with pytest.raises(ClientAuthenticationError) as excinfo:
            credential.get_token(f"{ARM}/.default")
    assert "AADSTS7000215" in str(excinfo.value)


@pytest.mark.parametrize("send_chain", [False, True], ids=["thumbprint", "chain"])
def test_azure_identity_certificate_credential(sim, verify, cert_app, tmp_path, send_chain):
    app, sp, cert = cert_app
    pem = tmp_path / "app.pem"
    pem.write_text(cert.key_pem + cert.cert_pem)
    with CertificateCredential(
        sim["tenant_id"],
        app["appId"],
        certificate_path=str(pem),
        send_certificate_chain=send_chain,
        authority=sim["aad"],
        disable_instance_discovery=True,
        connection_timeout=HTTP_TIMEOUT_S,
        read_timeout=HTTP_TIMEOUT_S,
    ) as credential:
        token = credential.get_token(f"{ARM}/.default")
    verify(token.token, resource=ARM, appid=app["appId"], oid=sp["id"], appidacr="2")


# --------------------------------------------------------------------------
# Graph: credentials and authorization
# --------------------------------------------------------------------------
def test_add_password_then_sign_in_and_non_admin_is_denied(graph, authority, verify):
    app = graph.create_application("interop-addpassword")
    assert not app.get("passwordCredentials"), app
    sp = graph.create_service_principal(app["appId"])

    # Before addPassword there is no secret that could work.
    result = cca(authority, app["appId"], "no-secret-yet").acquire_token_for_client(scopes=[f"{GRAPH}/.default"])
    assert "access_token" not in result and 7000215 in result["error_codes"], result

    cred = graph.add_password(app["id"], "interop secret")
    assert cred["displayName"] == "interop secret"
    assert cred.get("hint") in (None, cred["secretText"][:3]), cred

    result = cca(authority, app["appId"], cred["secretText"]).acquire_token_for_client(scopes=[f"{GRAPH}/.default"])
    assert "access_token" in result, result
    app_token = result["access_token"]
    verify(app_token, resource=GRAPH, appid=app["appId"], oid=sp["id"], appidacr="1")

    # The app's own Graph token does not carry the admin's rights.
    r = graph.call("POST", "/applications", {"displayName": "should-not-exist"}, token=app_token)
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "Authorization_RequestDenied", error
    assert error.get("message"), error


def test_graph_lookup_update_delete(graph, authority, secret_app):
    app, sp, secret = secret_app
    r = graph.call("GET", "/servicePrincipals", params={"$filter": f"appId eq '{app['appId']}'"})
    assert r.status_code == 200, r.text
    found = r.json()["value"]
    assert [p["id"] for p in found] == [sp["id"]], found

    r = graph.call("PATCH", f"/applications/{app['id']}", {"displayName": "interop-renamed"})
    assert r.status_code == 204, r.text
    r = graph.call("GET", f"/applications/{app['id']}")
    assert r.status_code == 200, r.text
    assert r.json()["displayName"] == "interop-renamed"

    result = cca(authority, app["appId"], secret).acquire_token_for_client(scopes=[f"{ARM}/.default"])
    assert "access_token" in result, result

    r = graph.call("DELETE", f"/applications/{app['id']}")
    assert r.status_code == 204, r.text
    r = graph.call("GET", f"/applications/{app['id']}")
    assert r.status_code == 404, r.text
    # A deleted application is an unknown client (a new MSAL app: no cache).
    result = cca(authority, app["appId"], secret).acquire_token_for_client(scopes=[f"{ARM}/.default"])
    assert "access_token" not in result, result
    assert 700016 in result["error_codes"], result
