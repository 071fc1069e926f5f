"""Signing keys and tokens for JWT tests (made with cryptography and PyJWT), and the JWKS
document of their public keys."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())
ED = ed25519.Ed25519PrivateKey.generate()
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: Any, kid: str) -> dict[str, Any]:
    algo = {rsa.RSAPrivateKey: jwt.algorithms.RSAAlgorithm, ec.EllipticCurvePrivateKey:
            jwt.algorithms.ECAlgorithm, ed25519.Ed25519PrivateKey: jwt.algorithms.OKPAlgorithm}  # fmt: skip
    cls = next(c for t, c in algo.items() if isinstance(key, t))
    doc = json.loads(cls.to_jwk(key.public_key()))
    doc["kid"] = kid
    return doc


JWKS = json.dumps({"keys": [jwk(RSA, "r1"), jwk(EC, "e1"), jwk(ED, "d1")]})


def token(key: Any = RSA, alg: str = "RS256", kid: str | None = "r1", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": "https://idp.example", "aud": "api", "sub": "u-1", "exp": now + 600, **claims}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)
