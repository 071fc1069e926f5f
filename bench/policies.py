"""Edge policies for the benchmarks: a JWT check, a local rate limit that never refuses,
an API key and a Python filter (the example header signer), on the benchmark route
(`api`), with the request fields that pass them.

    policies("jwt,ratelimit") -> (YAML documents, extra request header lines)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

KINDS = ("jwt", "ratelimit", "apikey", "python")
SIGNER = Path(__file__).resolve().parents[1] / "examples" / "filters" / "signer.py"
API_KEY = "bench-key-0123456789"
TARGET = "targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}]"


def policies(which: str) -> tuple[str, bytes]:
    """The documents to append to the edge's configuration and the header lines that a
    request needs to pass them (`which`: comma-separated KINDS, or "" for none)."""
    kinds = [k for k in which.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise SystemExit(f"bench: unknown policy {', '.join(sorted(unknown))} (of {KINDS})")
    docs, lines, security = [], b"", []
    if "jwt" in kinds:
        jwks, token = _jwt()
        security.append(
            "  jwt:\n    providers:\n    - name: bench\n      issuer: https://bench\n"
            f"      localJWKS: {{type: Inline, inline: {json.dumps(jwks)}}}\n"
        )
        lines += b"Authorization: Bearer " + token.encode() + b"\r\n"
    if "apikey" in kinds:
        docs.append("apiVersion: v1\nkind: Secret\nmetadata: {name: keys}\ntype: Opaque\n"
                    f"stringData: {{bench: {API_KEY}}}\n")  # fmt: skip
        security.append(
            "  apiKeyAuth:\n    credentialRefs: [{name: keys}]\n"
            "    extractFrom: [{headers: [x-api-key]}]\n    forwardClientIDHeader: x-client\n"
        )
        lines += b"X-Api-Key: " + API_KEY.encode() + b"\r\n"
    if security:
        docs.append("apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: SecurityPolicy\n"
                    f"metadata: {{name: bench}}\nspec:\n  {TARGET}\n" + "".join(security))  # fmt: skip
    if "ratelimit" in kinds:  # per client address, far above what a run sends
        docs.append(
            "apiVersion: gateway.envoyproxy.io/v1alpha1\nkind: BackendTrafficPolicy\n"
            f"metadata: {{name: bench}}\nspec:\n  {TARGET}\n  rateLimit:\n    type: Local\n"
            "    local:\n      rules:\n      - clientSelectors: [{sourceCIDR: {type: Distinct, "
            "value: 0.0.0.0/0}}]\n        limit: {requests: 1000000000, unit: Second}\n"
        )
    if "python" in kinds:  # a user filter in Python: examples/filters/signer.py
        docs.append(
            "apiVersion: weft.dev/v1alpha1\nkind: PythonFilter\nmetadata: {name: bench}\n"
            f"spec:\n  {TARGET}\n  file: {SIGNER}\n  class: HeaderSigner\n"
            "  config: {key: bench-signing-key}\n"
        )
    return "".join(f"---\n{d}" for d in docs), lines


def _jwt() -> tuple[str, str]:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    token = jwt.encode(
        {"iss": "https://bench", "sub": "bench", "exp": int(time.time()) + 86400}, key,
        algorithm="RS256", headers={"kid": "bench"},
    )  # fmt: skip
    return json.dumps({"keys": [{**public, "kid": "bench"}]}), token
