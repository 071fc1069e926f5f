"""JWT checks with tokens minted by PyJWT and keys made by cryptography: RSA, EC and
EdDSA accepted; expired, not yet valid, wrong issuer or audience, unknown key, `alg:
none` and HS256 signed with the public key refused; claims forwarded safely."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from sidecar.filters.chain import Exchange
from sidecar.filters.jwt_auth import JwtFilter, Provider, TokenSource, load_jwks
from tests.support.tokens import EC, ED, JWKS, OTHER, RSA, jwk, token

PROVIDER = Provider(
    name="idp", keys=tuple(load_jwks(JWKS)), issuer="https://idp.example", audiences=("api",),
    claim_to_headers=((b"x-sub", "sub"), (b"x-tenant", "tenant")),
)  # fmt: skip


def _ask(token: str | None, provider: Provider = PROVIDER) -> tuple[int, dict[bytes, bytes]]:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    headers.append((b"x-tenant", b"forged"))
    x = Exchange("GET", "api", "/", "", headers, "10.0.0.1")
    reply = JwtFilter((provider,), "default/p").on_request(x)
    if reply is not None:
        return reply.status, dict(reply.headers)
    return 200, dict(x.headers)


@pytest.mark.parametrize(("key", "alg", "kid"), [(RSA, "RS256", "r1"), (RSA, "PS384", "r1"),
                                                 (EC, "ES256", "e1"), (ED, "EdDSA", "d1"),
                                                 (EC, "ES256", None)])  # fmt: skip
def test_valid_tokens_pass_and_name_their_claims(key: Any, alg: str, kid: str | None) -> None:
    status, headers = _ask(token(key, alg, kid, tenant="acme"))
    assert status == 200
    assert headers[b"x-sub"] == b"u-1" and headers[b"x-tenant"] == b"acme"  # not the forged


def _unsigned() -> str:
    def b64(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return (
        f"{b64({'alg': 'none', 'kid': 'r1'})}.{b64({'iss': 'https://idp.example', 'aud': 'api'})}."
    )


def _hs256_with_the_public_key() -> str:
    pem = RSA.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","kid":"r1"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(b'{"iss":"https://idp.example","aud":"api"}').rstrip(b"=")
    import hashlib
    import hmac

    sig = hmac.new(pem, header + b"." + body, hashlib.sha256).digest()
    return (header + b"." + body + b"." + base64.urlsafe_b64encode(sig).rstrip(b"=")).decode()


@pytest.mark.parametrize(
    "token",
    [token(exp=int(time.time()) - 3600), token(nbf=int(time.time()) + 3600),
     token(iss="https://evil.example"), token(aud="other"), token(OTHER),
     token(kid="nope"), token(EC, "ES256", "r1"), _unsigned(), _hs256_with_the_public_key(),
     "not.a.token", "x" * 50],
    ids=["expired", "not-yet", "issuer", "audience", "other-key", "unknown-kid", "kid-kty-mismatch",
         "alg-none", "hs256-public-key", "malformed", "garbage"],
)  # fmt: skip
def test_bad_tokens_are_refused(token: str) -> None:
    status, headers = _ask(token)
    assert status == 401 and b'error="invalid_token"' in headers[b"www-authenticate"]


def test_a_missing_token_is_a_challenge_and_other_places_are_read() -> None:
    status, headers = _ask(None)
    assert status == 401 and headers[b"www-authenticate"] == b'Bearer realm="default/p"'
    in_cookie = Provider(
        name="c", keys=PROVIDER.keys, source=TokenSource(headers=(), cookies=("session",))
    )
    x = Exchange("GET", "a", "/", "", [(b"cookie", f"a=1; session={token()}".encode())], "1.2.3.4")
    assert JwtFilter((in_cookie,), "r").on_request(x) is None


def test_skew_and_unsafe_claims() -> None:
    assert _ask(token(exp=int(time.time()) - 30))[0] == 200  # within 60 s of skew
    status, headers = _ask(token(sub="u\r\nx-admin: 1"))
    assert status == 200 and b"x-sub" not in headers  # never a CR or LF upstream


def test_jwks_documents_are_checked() -> None:
    for text, message in (("{}", "JWKS document"), ('{"keys": []}', "has no keys"),
                          ('{"keys": [{"kty": "oct", "k": "x"}]}', "kty must be one of"),
                          (json.dumps({"keys": [{**jwk(EC, "e"), "d": "x"}]}), "private key")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            load_jwks(text)


def test_verified_tokens_are_remembered_until_they_expire() -> None:
    f = JwtFilter((PROVIDER,), "r")
    clock = [time.time()]
    f.clock = lambda: clock[0]

    def ask(t: str) -> int:
        x = Exchange("GET", "a", "/", "", [(b"authorization", f"Bearer {t}".encode())], "1.2.3.4")
        reply = f.on_request(x)
        return reply.status if reply is not None else 200

    good = token(exp=int(clock[0]) + 100)
    assert ask(good) == 200 and ask(good) == 200
    until, provider, claims = f.verified[good]
    assert provider is PROVIDER and claims["sub"] == "u-1"
    assert until == int(clock[0]) + 100 + 60  # never past exp (and its skew)
    bad = token(aud="other")
    assert ask(bad) == 401 and ask(bad) == 401 and bad not in f.verified
    long_lived = token(exp=int(clock[0]) + 86400)
    assert ask(long_lived) == 200 and f.verified[long_lived][0] == clock[0] + 300
    clock[0] += 301  # remembered no longer: checked again (and still valid)
    assert ask(long_lived) == 200 and f.verified[long_lived][0] == clock[0] + 300
