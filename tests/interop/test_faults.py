"""Fault plans observed through azure-identity's ManagedIdentityCredential.

Each plan is added through misim's `/_sim/faults` API (the bootstrap admin's token) for the
demo VM; the official client then behaves as it does against Azure's IMDS: it retries 404, 410,
429 and 5xx (honouring Retry-After) and dropped connections, and gives up at once on a 400. How
often a plan answered is read back from misim's event timeline (`imds.fault.injected`), not
guessed from timings alone.
"""

from __future__ import annotations

import time

import pytest
import requests
from azure.identity import CredentialUnavailableError, ManagedIdentityCredential

from conftest import ARM, HTTP_TIMEOUT_S, REFUSED, cca

ARM_SCOPE = f"{ARM}/.default"


@pytest.fixture(autouse=True)
def imds_host(sim_demo, monkeypatch):
    """Every managed identity client talks to the demo VM's IMDS on loopback."""
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", sim_demo["imds"])
    start = len(REFUSED)
    yield
    assert REFUSED[start:] == [], f"a client tried to leave loopback: {REFUSED[start:]}"


class Sim:
    """misim's /_sim/ APIs as the bootstrap admin."""

    def __init__(self, conn):
        admin = conn["admin"]
        authority = f"{conn['aad']}/{conn['tenant_id']}"
        result = cca(authority, admin["client_id"], admin["client_secret"]).acquire_token_for_client(
            scopes=[ARM_SCOPE]
        )
        assert "access_token" in result, result
        self.base = conn["arm"]
        self.headers = {"Authorization": f"Bearer {result['access_token']}"}

    def call(self, method: str, path: str, body=None, params=None):
        r = requests.request(method, self.base + path, json=body, params=params,
                             headers=self.headers, timeout=HTTP_TIMEOUT_S)
        assert r.status_code < 500, f"{method} {path}: {r.status_code} {r.text}"
        return r

    def cursor(self) -> str:
        return self.call("GET", "/_sim/events", params={"vm": "demo-vm"}).json()["cursor"]

    def events_since(self, cursor: str, kind: str) -> list:
        r = self.call("GET", "/_sim/events", params={"vm": "demo-vm", "after": cursor, "kind": kind})
        return r.json()["value"]

    def fault(self, **plan) -> dict:
        r = self.call("POST", "/_sim/faults", dict({"target": "imds", "vm": "demo-vm"}, **plan))
        assert r.status_code == 201, r.text
        return r.json()


@pytest.fixture
def sim(sim_demo):
    client = Sim(sim_demo)
    client.call("DELETE", "/_sim/faults")
    yield client
    client.call("DELETE", "/_sim/faults")


def fresh_token() -> tuple[str, float]:
    """A token from a new credential (so nothing is served from azure-identity's cache)."""
    started = time.monotonic()
    with ManagedIdentityCredential() as credential:
        token = credential.get_token(ARM_SCOPE).token
    return token, time.monotonic() - started


@pytest.mark.parametrize("status", [404, 410, 500, 503])
def test_retryable_statuses_are_retried_until_imds_answers(sim, status):
    cursor = sim.cursor()
    sim.fault(kind="status", status=status, count=1)
    token, _ = fresh_token()
    assert token.count(".") == 2
    # The fault answered once; the retry got the token.
    assert len(sim.events_since(cursor, "imds.fault.injected")) == 1


def test_two_503s_are_retried_with_backoff(sim):
    cursor = sim.cursor()
    sim.fault(kind="status", status=503, count=2)
    token, elapsed = fresh_token()
    assert token
    assert len(sim.events_since(cursor, "imds.fault.injected")) == 2
    # azure-identity's IMDS policy sleeps 0 s, then 1.6 s between its first retries.
    assert elapsed >= 1.5, elapsed


def test_429_retry_after_is_honoured(sim):
    cursor = sim.cursor()
    sim.fault(kind="status", status=429, retryAfter=2, count=1)
    token, elapsed = fresh_token()
    assert token
    assert len(sim.events_since(cursor, "imds.fault.injected")) == 1
    assert elapsed >= 2.0, f"Retry-After: 2 was not honoured ({elapsed:.2f} s)"


def test_a_dropped_connection_is_retried(sim):
    cursor = sim.cursor()
    sim.fault(kind="drop", count=1)
    token, _ = fresh_token()
    assert token
    assert len(sim.events_since(cursor, "imds.fault.injected")) == 1


def test_a_400_is_not_retried(sim):
    cursor = sim.cursor()
    sim.fault(kind="status", status=400, count=3)
    with pytest.raises(CredentialUnavailableError):
        fresh_token()
    # One attempt only: the plan still has two answers left.
    assert len(sim.events_since(cursor, "imds.fault.injected")) == 1
    remaining = [f for f in sim.call("GET", "/_sim/faults").json()["value"] if f.get("status") == 400]
    assert remaining and remaining[0]["remaining"] == 2


def test_latency_is_waited_out(sim):
    sim.fault(kind="latency", latencyMs=700, count=1)
    token, elapsed = fresh_token()
    assert token
    assert elapsed >= 0.7, elapsed


def test_an_aad_outage_reaches_the_client_as_a_retried_5xx(sim):
    cursor = sim.cursor()
    r = sim.call("POST", "/_sim/faults", {"target": "aad", "kind": "status", "status": 503, "count": 1})
    assert r.status_code == 201, r.text
    # A resource no other test asks for, so IMDS's own cache cannot answer: IMDS answers 500
    # while AAD refuses, the client retries, and the second attempt gets AAD's token.
    with ManagedIdentityCredential() as credential:
        token = credential.get_token("https://cognitiveservices.azure.com/.default").token
    assert token
    failed = sim.events_since(cursor, "imds.token.failed")
    assert len(failed) == 1, failed
