"""Session fixtures for the official-client interop suite.

One `misim up` process serves the whole session (fresh data dir, every port 0,
no demo). Tests create their own applications, so they do not depend on each
other's state. The IMDS tests use a second one, `sim_demo`, started with the
demo VM (its IMDS base URL is connection["imds"]).

Network safety: the clients under test must only ever talk to the simulator on
loopback. Proxy and Azure/MSAL environment variables are removed at import time
(before any client exists), the simulator's CA is installed through
REQUESTS_CA_BUNDLE / SSL_CERT_FILE, and a socket guard turns any attempt to
resolve or connect to a non-loopback address into an immediate test failure.

Shared by the test modules: the suite's constants, `cca` (an MSAL confidential
client that never does instance discovery), the `Graph` helper and the
`admin_graph_token` / `graph` / `secret_app` fixtures.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import msal
import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 10.0  # every HTTP call of the suite is bounded
ARM = "https://management.azure.com"
GRAPH = "https://graph.microsoft.com"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# --------------------------------------------------------------------------
# Hermetic environment, applied at import, before any client is constructed.
# --------------------------------------------------------------------------
_PROXY_VARS = (
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "FTP_PROXY", "NO_PROXY",
    "http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy",
)
for _name in _PROXY_VARS:
    os.environ.pop(_name, None)
# Nothing to proxy anyway, but make any library that consults it skip proxies.
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost,::1"
# AZURE_* (e.g. AZURE_REGIONAL_AUTHORITY_NAME makes MSAL probe the real IMDS
# at 169.254.169.254, AZURE_AUTHORITY_HOST would redirect credentials) and
# MSAL_* (MSAL_FORCE_REGION) must not leak in from the caller's shell.
for _name in list(os.environ):
    if _name.startswith(("AZURE_", "MSAL_", "IDENTITY_", "MSI_")):
        os.environ.pop(_name, None)
for _name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"):
    os.environ.pop(_name, None)


# --------------------------------------------------------------------------
# Loopback-only socket guard.
# --------------------------------------------------------------------------
_LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost"}


def _is_loopback_host(host) -> bool:
    if host is None:
        return True  # getaddrinfo(None, port) means the local wildcard/loopback
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class NonLoopbackNetworkAccess(AssertionError):
    pass


# Every refused host or address, in order. Some clients catch any exception
# (azure-identity's managed identity credentials turn one into
# CredentialUnavailableError), so tests that expect a client to fail can check
# this list to be sure the failure was not the guard's.
REFUSED: list[str] = []

_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _refuse(message: str):
    REFUSED.append(message)
    raise NonLoopbackNetworkAccess(message)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if not _is_loopback_host(host):
        _refuse(f"interop tests may only resolve loopback hosts, not {host!r}")
    return _real_getaddrinfo(host, *args, **kwargs)


def _check_address(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0] if isinstance(address, tuple) else address
        if not _is_loopback_host(host):
            _refuse(f"interop tests may only connect to loopback, not {address!r}")


def _guarded_connect(self, address):
    _check_address(self, address)
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    _check_address(self, address)
    return _real_connect_ex(self, address)


socket.getaddrinfo = _guarded_getaddrinfo
socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex


# --------------------------------------------------------------------------
# The simulator process.
# --------------------------------------------------------------------------
def misim_binary() -> Path:
    explicit = os.environ.get("MISIM_BIN")
    if explicit:
        return Path(explicit)
    release = REPO / "target" / "release" / "misim"
    if release.exists():
        return release
    return REPO / "target" / "debug" / "misim"


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM misim if pytest itself dies (Linux)."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


def _log_tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "<no log>"


# CA files of the simulators running now. Two may run at once (`sim` and
# `sim_demo`), each with its own CA: the clients trust all of them through one
# bundle, so starting the second does not break TLS to the first.
_TRUSTED_CAS: list[Path] = []
_TRUST_VARS = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
_saved_trust: dict[str, str | None] = {}


def _apply_trust() -> None:
    if not _TRUSTED_CAS:
        for key, value in _saved_trust.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _saved_trust.clear()
        return
    if not _saved_trust:
        _saved_trust.update({k: os.environ.get(k) for k in _TRUST_VARS})
    if len(_TRUSTED_CAS) == 1:
        bundle = _TRUSTED_CAS[0]
    else:
        # Next to the first simulator's data dir, removed with it.
        bundle = _TRUSTED_CAS[0].parent / "interop-ca-bundle.pem"
        bundle.write_text("".join(ca.read_text() for ca in _TRUSTED_CAS))
    for key in _TRUST_VARS:
        os.environ[key] = str(bundle)


def _run_misim(*, demo: bool):
    """Start `misim up` (every port 0), wait for connection.json, yield it parsed, stop it.

    `demo=False` passes --no-demo; `demo=True` keeps the seeded demo resource
    group and VM (and the VM's IMDS listener, `imds` in connection.json).
    """
    binary = misim_binary()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        pytest.fail(
            f"misim binary not found or not executable: {binary} "
            "(build it, or point MISIM_BIN at one)",
            pytrace=False,
        )

    data_dir = Path(tempfile.mkdtemp(prefix="misim-interop-demo-" if demo else "misim-interop-"))
    log_path = data_dir.parent / (data_dir.name + ".log")
    conn_path = data_dir / "connection.json"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("MISIM_")}
    args = [
        str(binary), "up",
        "--data-dir", str(data_dir),
        "--host", "127.0.0.1",
        "--arm-port", "0", "--aad-port", "0", "--imds-port", "0",
    ]
    if not demo:
        args.append("--no-demo")
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=child_env,
        preexec_fn=_die_with_parent,
    )
    ca = None
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        conn = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(
                    f"misim exited with {proc.returncode} before it was ready:\n{_log_tail(log_path)}",
                    pytrace=False,
                )
            if conn_path.exists():
                try:
                    conn = json.loads(conn_path.read_text())
                    break
                except (OSError, ValueError):
                    pass  # written atomically, but be tolerant anyway
            time.sleep(0.1)
        if conn is None:
            pytest.fail(
                f"misim wrote no {conn_path} within {READY_TIMEOUT_S:.0f}s:\n{_log_tail(log_path)}",
                pytrace=False,
            )

        keys = ("aad", "graph", "arm") + (("imds",) if demo else ())
        for key in keys:
            host = conn[key].split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
            assert _is_loopback_host(host), f"{key} is not a loopback URL: {conn[key]}"
        if demo:
            assert conn["imds"].startswith("http://"), conn["imds"]
            assert conn["demo_vm"]["id"].startswith(f"/subscriptions/{conn['subscription_id']}/"), conn
        ca = Path(conn["ca_cert"])
        assert ca.is_absolute() and ca.is_file(), f"ca_cert is not an absolute existing path: {ca}"

        # Trust the simulator's CA before any client is constructed.
        _TRUSTED_CAS.append(ca)
        _apply_trust()

        conn["_data_dir"] = str(data_dir)
        conn["_log"] = str(log_path)
        yield conn
    finally:
        _stop(proc)
        log.close()
        if ca is not None and ca in _TRUSTED_CAS:
            _TRUSTED_CAS.remove(ca)
            _apply_trust()
        shutil.rmtree(data_dir, ignore_errors=True)
        try:
            log_path.unlink()
        except OSError:
            pass


@pytest.fixture(scope="session")
def sim():
    """The suite's simulator: no demo resources, tests create what they use."""
    yield from _run_misim(demo=False)


@pytest.fixture(scope="session")
def sim_demo():
    """A second simulator WITH the demo resource group and VM (system-assigned
    identity, IMDS at connection["imds"]). Separate from `sim` so that tests
    there never see the demo VM's principal or role assignments."""
    yield from _run_misim(demo=True)


@pytest.fixture(scope="session")
def authority(sim) -> str:
    return f"{sim['aad']}/{sim['tenant_id']}"


# --------------------------------------------------------------------------
# Shared helpers: MSAL and a minimal Graph client (used by several modules).
# --------------------------------------------------------------------------
def cca(authority: str, client_id: str, credential, **kwargs) -> msal.ConfidentialClientApplication:
    """An MSAL confidential client that never calls login.microsoftonline.com."""
    return msal.ConfidentialClientApplication(
        client_id,
        client_credential=credential,
        authority=authority,
        instance_discovery=False,
        timeout=HTTP_TIMEOUT_S,
        **kwargs,
    )


class Graph:
    """Minimal Microsoft Graph client (the subset misim serves)."""

    def __init__(self, base: str, token: str):
        self.base = base.rstrip("/") + "/v1.0"
        self.token = token

    def call(self, method: str, path: str, body=None, params=None, token: str | None = None) -> requests.Response:
        return requests.request(
            method,
            self.base + path,
            json=body,
            params=params,
            headers={"Authorization": f"Bearer {token or self.token}"},
            timeout=HTTP_TIMEOUT_S,
        )

    def create_application(self, display_name: str, certs=()) -> dict:
        """`certs`: objects with a `key_credential()` dict (see test_aad.Cert)."""
        body = {"displayName": display_name}
        if certs:
            body["keyCredentials"] = [c.key_credential() for c in certs]
        r = self.call("POST", "/applications", body)
        assert r.status_code == 201, r.text
        app = r.json()
        assert UUID_RE.match(app["id"]) and UUID_RE.match(app["appId"]), app
        assert app["displayName"] == display_name
        assert len(app.get("keyCredentials", [])) == len(certs), app
        return app

    def create_service_principal(self, app_id: str) -> dict:
        r = self.call("POST", "/servicePrincipals", {"appId": app_id})
        assert r.status_code == 201, r.text
        sp = r.json()
        assert sp["appId"] == app_id and UUID_RE.match(sp["id"]), sp
        return sp

    def add_password(self, object_id: str, display_name: str = "interop") -> dict:
        r = self.call("POST", f"/applications/{object_id}/addPassword", {"passwordCredential": {"displayName": display_name}})
        assert r.status_code == 200, r.text
        cred = r.json()
        assert cred["secretText"] and UUID_RE.match(cred["keyId"]), cred
        return cred


@pytest.fixture(scope="session")
def admin_graph_token(sim, authority):
    admin = sim["admin"]
    result = cca(authority, admin["client_id"], admin["client_secret"]).acquire_token_for_client(
        scopes=[f"{GRAPH}/.default"]
    )
    assert "access_token" in result, result
    return result["access_token"]


@pytest.fixture(scope="session")
def graph(sim, admin_graph_token):
    return Graph(sim["graph"], admin_graph_token)


@pytest.fixture
def secret_app(graph, request):
    """A fresh application with a password credential and a service principal."""
    app = graph.create_application(f"interop-{request.node.name}")
    sp = graph.create_service_principal(app["appId"])
    cred = graph.add_password(app["id"])
    return app, sp, cred["secretText"]
