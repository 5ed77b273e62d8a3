"""An unmodified app: gets an ARM token from the managed identity the environment points at.

    probe.py dac|mic|msal [CLIENT_ID]

Nothing in here names an authority or an endpoint: only the environment set by `misim vm exec`
steers the clients. Prints one JSON line: the case, the token's claims (decoded without
verification), the identity-related variables seen, and the seconds the token took. Any failure
exits non-zero with the message on stderr.
"""

import base64
import json
import os
import sys
import time

SCOPE = "https://management.azure.com/.default"
RESOURCE = "https://management.azure.com"
PREFIXES = ("IDENTITY_", "MSI_", "IMDS_", "AZURE_POD")


def token(case, client_id):
    if case == "dac":
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential().get_token(SCOPE).token
    if case == "mic":
        from azure.identity import ManagedIdentityCredential

        credential = ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
        return credential.get_token(SCOPE).token
    if case == "msal":
        import msal
        import requests

        identity = (
            msal.UserAssignedManagedIdentity(client_id=client_id)
            if client_id
            else msal.SystemAssignedManagedIdentity()
        )
        client = msal.ManagedIdentityClient(identity, http_client=requests.Session())
        result = client.acquire_token_for_client(resource=RESOURCE)
        if "access_token" not in result:
            raise RuntimeError(f"MSAL: {result.get('error')}: {result.get('error_description')}")
        return result["access_token"]
    raise ValueError(f"unknown case {case!r} (dac | mic | msal)")


def claims(jwt):
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def main():
    case = sys.argv[1] if len(sys.argv) > 1 else ""
    client_id = sys.argv[2] if len(sys.argv) > 2 else None
    start = time.monotonic()
    try:
        jwt = token(case, client_id)
    except Exception as error:  # report any client failure, exit non-zero
        print(f"probe {case}: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
    elapsed = round(time.monotonic() - start, 3)
    env = sorted(name for name in os.environ if name.startswith(PREFIXES))
    print(json.dumps({"case": case, "claims": claims(jwt), "env": env, "elapsed": elapsed}))


if __name__ == "__main__":
    main()
