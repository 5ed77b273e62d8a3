"""A toy OIDC issuer on loopback (a Kubernetes cluster's or a CI system's) for workload identity
federation tests: its discovery document and key set of one RSA key ("k1"), and tokens it signs.
Used by the pytest suite and by the az scenario (each from its own venv)."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

EXCHANGE = "api://AzureADTokenExchange"


def _b64(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class OidcIssuer:
    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self.key.public_key().public_numbers()
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

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        documents["/.well-known/openid-configuration"] = json.dumps(
            {"issuer": self.url, "jwks_uri": f"{self.url}/keys"}).encode()
        documents["/keys"] = json.dumps({"keys": [
            {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": "k1", "n": _b64(numbers.n), "e": _b64(numbers.e)}
        ]}).encode()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, subject: str, audience: str = EXCHANGE, lifetime_s: int = 3600) -> str:
        now = int(time.time())
        claims = {"iss": self.url, "sub": subject, "aud": [audience], "iat": now, "nbf": now,
                  "exp": now + lifetime_s, "jti": str(uuid.uuid4())}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "k1"})

    def close(self):
        self.server.shutdown()
        self.server.server_close()
